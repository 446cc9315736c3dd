# afmetrics: `make run` runs every collector in debug mode; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
.DEFAULT_GOAL := test

.PHONY: run test venv unit vermin bench clean

$(STAMP): requirements.txt requirements-jupyter.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# Debug mode: no token needed; documents land as JSON Lines in ./run/, state in ./run/state.
run: $(STAMP)
	mkdir -p run
	cd run && ../$(PY) ../collectors/afmetrics_collector -d -v -sjb --host --state-dir state

# Each area adds its own targets to TEST_EXTRA from mk/*.mk (Molecule, real HTCondor, ...).
TEST_EXTRA :=
-include mk/*.mk

test: unit vermin $(TEST_EXTRA)

unit: $(STAMP)
	$(PY) -m pytest -q tests

# Collectors must run on EL9's Python 3.9.
vermin: $(STAMP)
	$(VENV)/bin/vermin -q --no-tips --eval-annotations --target=3.9- --violations collectors/*.py collectors/afmetrics_collector

# Numbers, not pass/fail: prints a table and writes bench/results/latest.md (takes minutes).
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) run .pytest_cache
