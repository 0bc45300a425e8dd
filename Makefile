# `make run`: set up and run the main job. `make test`: set up and run the tests (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test
setup: $(VENV)/.installed

# torch/torchvision come from the ranges in pyproject.toml (here: the pair torch 2.14.1 + torchvision 0.29.1);
# the optional extras too, so that the tracking and Optuna tests run (and, under CI=true, must pass).
# The mlflow extra goes in a second step, outside the resolution of isorobust's own dependencies:
# torchattacks 3.5.1 declares requests~=2.25.1 (it never imports requests) while MLflow 3 needs
# requests>=2.28, and one `pip install -e ".[dev,mlflow,...]"` backtracks through old MLflow releases for
# over 50 minutes. Alone, pip installs it in about 2 minutes and notes the torchattacks pin.
EXTRA = import subprocess, sys, tomllib; \
	reqs = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"][sys.argv[1]]; \
	subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *reqs])
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,tensorboard,optuna]"
	$(PY) -c '$(EXTRA)' mlflow
	touch $@

run: setup
	$(VENV)/bin/isorobust train +reg=isometric

# The layer contract first (pyproject.toml, docs/architecture.md): an upward import fails before the tests run.
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest
