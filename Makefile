# Two entry points, as in the README's Quick start:
#   make demo   install into .venv and run the slow-thinking pipeline on the synthetic world
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,test]'

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/cold_start.py

clean:
	rm -rf $(VENV) build *.egg-info
