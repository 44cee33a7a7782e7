"""Application flows: what the Slack app, the console, the CLI, the demo and the workers all call."""
