# Two set-up commands (README): `make demo` runs the whole story, `make test` runs the suite.
# Both create the virtualenv on first use and are quick the second time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test bench bench-eval clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned here, in the install step: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 -e '.[dev]'
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/portllm demo

# Every core (pytest-xdist; a module's tests stay on one worker, so its fixtures are built once;
# files in collection order, which puts the demo world's users last), the slowest tests printed.
# The session starts its own PostgreSQL and Redis (tests/fixtures/services.py).
PYTEST_ARGS ?= -n auto --dist loadfile --no-loadscope-reorder --durations=15
test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(PY) bench/transplant.py
	$(PY) bench/run_memory.py
	$(PY) bench/serve.py
	$(PY) bench/ack.py

# lm-evaluation-harness side by side with our scoring; it needs the bench extra (torch stays pinned).
bench-eval: $(INSTALLED)
	$(PY) -m pip install -q torch==2.13.0 -e '.[bench]'
	$(PY) bench/eval.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
