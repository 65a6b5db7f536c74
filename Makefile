# Two commands do everything on a fresh machine:
#   make run   — build the environment if missing, then execute every notebook with papermill (embedded default)
#   make test  — build the environment if missing, then run the unit tests and nbval over every notebook (smoke profile)
VENV    ?= .venv
PY      := $(VENV)/bin/python
PARAMS  ?= params/default.yaml
STAMP   := $(VENV)/.installed

.PHONY: env run test strip clean

env: $(STAMP)

# torch is installed first and pinned to the CPU build (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m helpers.batch $(PARAMS) $(ARGS)

test: $(STAMP)
	RLVR_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q --nbval-lax tests notebooks $(ARGS)

strip: $(STAMP)
	$(PY) -m helpers.notebooks strip notebooks/*.ipynb

clean:
	rm -rf outputs/cache outputs/default outputs/default-smoke
