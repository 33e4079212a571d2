# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
# torch first and pinned: the CPU wheel on the dev machines; a bare `torch` could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.megafin-installed
PYTEST_ARGS ?=

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m megafin.demo

# pytest exits 5 when it collected nothing: make fails on any non-zero exit, so that cannot pass silently.
test: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out
