"""PortLLM's ML core: patch artifacts, compatibility and drift, transplant, KPI evaluation,
generation and the demo world. A pure library: no Slack, Celery or database imports; heavy
dependencies (torch, transformers, peft) are imported inside the functions that need them."""
