"""The operator CLI: the root `portllm` command, admin commands, the console channel and the demo."""
