# `make run`: set up and run the main job. `make test`: set up and run the tests (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test
setup: $(VENV)/.installed

# torch/torchvision come from the ranges in pyproject.toml (here: the pair torch 2.14.1 + torchvision 0.29.1).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/isorobust train +reg=isometric

test: setup
	$(PY) -m pytest
