# Delivery on EL9's Python 3.9, for real: the tests of what the AF endpoint's model indexes (tests/test_endpoint.py)
# and the delivery tests run with the collectors under a Python 3.9 interpreter and the requests/urllib3 versions
# pip installs there (urllib3 2.6 on 3.9, 2.8 on 3.11). PYTHON39 names the interpreter; by default a python3.9 on
# PATH that runs (not a pyenv shim without it), else pyenv's. CI has one: without it the target fails there (it is skipped elsewhere with one line).
.PHONY: test-py39 python39

PYTHON39 ?= $(shell for python in python3.9 $(HOME)/.pyenv/versions/3.9.*/bin/python3.9; do \
	"$$python" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null && command -v "$$python" && break; done)
VENV39 ?= .venv39
STAMP39 := $(VENV39)/.installed

$(STAMP39): requirements.txt
	$(PYTHON39) -m venv $(VENV39)
	$(VENV39)/bin/python -m pip install -q --upgrade pip
	$(VENV39)/bin/python -m pip install -q -r requirements.txt trustme==1.2.1 hypothesis==6.113.0 "pytest<9"
	touch $@

test-py39:
	@if [ -z "$(PYTHON39)" ]; then \
	    if [ "$${CI:-}" = true ]; then echo "test-py39: no Python 3.9 (set PYTHON39)"; exit 1; fi; \
	    echo "test-py39 skipped: no Python 3.9 on this machine (set PYTHON39)"; exit 0; fi; \
	$(MAKE) --no-print-directory $(STAMP39) && \
	$(VENV39)/bin/python -m pytest -q -p no:cacheprovider tests/test_endpoint.py tests/test_delivery.py

TEST_EXTRA += test-py39

# The interpreter PYTHON39 names, empty when none: tests/test_packaging.py runs `make run` and `make wheel` with it.
python39:
	@echo "$(PYTHON39)"
