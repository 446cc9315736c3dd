# pip packaging (pyproject.toml): `make wheel` builds dist/afmetrics-VERSION-py3-none-any.whl, the wheel that
# `pip install .` builds, for nodes that install it without a clone. It is built from a temporary copy of the
# files the wheel is made of, so that the checkout gets no build/ or afmetrics.egg-info; setuptools comes from
# the package index (pip's isolated build environment), nothing else is fetched.
# tests/test_packaging.py (part of `make unit`, so nothing joins TEST_EXTRA) builds the wheel with this target,
# installs it into a fresh venv with its dependencies from the index, as a site would, and runs every command
# it installs with -d; it also runs `make run` with and without condor_q and a kubeconfig, and `make run` and
# `make wheel` on a real Python 3.9 (mk/py39.mk's PYTHON39) in a copy of the checkout. About 50 s.
# `make test-package` runs that file alone.
.PHONY: wheel test-package

WHEEL_DIR ?= dist
PACKAGE_FILES := pyproject.toml README.md requirements.txt requirements-jupyter.txt collectors

wheel: $(RUN_STAMP)
	@mkdir -p "$(WHEEL_DIR)"
	@copy=$$(mktemp -d) && trap 'rm -rf "$$copy"' EXIT && \
	cp -R $(PACKAGE_FILES) "$$copy"/ && rm -rf "$$copy"/collectors/__pycache__ && \
	"$(abspath $(PY))" -m pip wheel -q --no-deps -w "$(abspath $(WHEEL_DIR))" "$$copy" && \
	ls "$(abspath $(WHEEL_DIR))"/afmetrics-*.whl

test-package: $(STAMP)
	$(PY) -m pytest -q tests/test_packaging.py
