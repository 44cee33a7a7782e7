"""The application core: one settings object, the task contract, the command core, flows and read models."""
