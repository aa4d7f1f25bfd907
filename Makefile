# Two entry points, as in the README's Quick start:
#   make demo   install into .venv and run the slow-thinking pipeline on the synthetic world
#   make test   install into .venv and run the test suite
#   make docker Docker engine, base image and wheelhouse for the Docker tests (root, Debian)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WHEELHOUSE ?= $(HOME)/.cache/pai-distil/wheelhouse

.PHONY: demo test bench install clean docker

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,test]'

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

test: install
	PAI_DISTIL_WHEELHOUSE=$(WHEELHOUSE) $(BIN)/python -m pytest -q

# The job image is built by the Docker tests themselves, from this wheelhouse, offline.
docker: install
	bash .ci/docker.sh
	$(BIN)/pai-distil images bootstrap-base
	$(BIN)/pai-distil images wheelhouse $(WHEELHOUSE)

bench: install
	$(BIN)/python benchmarks/cold_start.py

clean:
	rm -rf $(VENV) build *.egg-info
