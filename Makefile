# `make test` needs only python3 (with venv and pip): it builds .venv, installs wtfree, runs the checks.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: install test lint demo
install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Two pytest-xdist workers, one test file at a time each: a file's module fixtures, and the one
# run of every documented command (tests/test_documented_commands.py), stay in one process.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# The seed experiment's four rules side by side for 2 epochs, then the comparison figure.
demo: install
	$(PY) -m wtfree.sweep configs/sweeps/mnist_demo.py --workdir runs/demo
	$(PY) -m wtfree.plot runs/demo/bp runs/demo/fa runs/demo/wm runs/demo/kp --out runs/demo/report.png
