"""The command core shared by Slack and the console: one grammar, one set of handlers."""
