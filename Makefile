# afmetrics: `make run` runs every collector in debug mode; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Two stamps: `make run` and `make wheel` need only the runtime dependencies, which install on Python 3.9 through
# 3.13 (EL9's 3.9 included); the test tools of requirements-dev.txt (pytest 9 needs 3.10) come with `make test`.
RUN_STAMP := $(VENV)/.installed-run
STAMP  := $(VENV)/.installed
.DEFAULT_GOAL := test

.PHONY: run test venv unit vermin bench clean

$(RUN_STAMP): requirements.txt requirements-jupyter.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-jupyter.txt
	touch $@

$(STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# Debug mode: no token needed; documents land as JSON Lines in $(RUN_DIR)/, state in $(RUN_DIR)/state.
# ssh and host always run; batch only where condor_q is on PATH, slurm where squeue is; jupyter only with a kubeconfig ($KUBECONFIG,
# else ~/.kube/config) or an in-cluster service account. Each collector left out says why in one line and the
# run exits 0; a collector that runs and fails still fails `make run`.
RUN_DIR ?= run
KUBERNETES_SERVICEACCOUNT ?= /var/run/secrets/kubernetes.io/serviceaccount
run: $(RUN_STAMP)
	@flags="-s --host"; kube=""; sa=""; \
	if command -v condor_q >/dev/null 2>&1; then flags="$$flags -b"; \
	else echo "make run: batch skipped: no condor_q on PATH"; fi; \
	if command -v squeue >/dev/null 2>&1; then flags="$$flags --slurm"; \
	else echo "make run: slurm skipped: no squeue on PATH"; fi; \
	if [ -n "$${KUBECONFIG:-}" ]; then flags="$$flags -j"; \
	elif [ -f "$$HOME/.kube/config" ]; then flags="$$flags -j"; kube="$$HOME/.kube/config"; \
	elif [ -n "$${KUBERNETES_SERVICE_HOST:-}" ] && [ -f "$(KUBERNETES_SERVICEACCOUNT)/token" ]; then \
	    flags="$$flags -j"; sa="$(KUBERNETES_SERVICEACCOUNT)"; \
	else echo "make run: jupyter skipped: no kubeconfig (\$$KUBECONFIG, ~/.kube/config)" \
	    "and no in-cluster service account"; fi; \
	mkdir -p "$(RUN_DIR)" && cd "$(RUN_DIR)" && \
	echo "make run: afmetrics_collector -d -v $$flags$${kube:+ --kubeconfig $$kube}" \
	    "$${sa:+--serviceaccount-dir $$sa }--state-dir state, in $(RUN_DIR)/" && \
	"$(abspath $(PY))" "$(CURDIR)/collectors/afmetrics_collector" -d -v $$flags \
	    $${kube:+--kubeconfig "$$kube"} $${sa:+--serviceaccount-dir "$$sa"} --state-dir state

# Each area adds its own targets to TEST_EXTRA from mk/*.mk (Molecule, real HTCondor, ...).
TEST_EXTRA :=
-include mk/*.mk

test: unit vermin $(TEST_EXTRA)

# tests/test_collection.py builds the Ansible collection: ansible-galaxy from requirements-ansible.txt.
unit: $(STAMP) $(ANSIBLE_STAMP)
	$(PY) -m pytest -q tests

# Collectors must run on EL9's Python 3.9.
vermin: $(STAMP)
	$(VENV)/bin/vermin -q --no-tips --eval-annotations --target=3.9- --violations collectors/*.py collectors/afmetrics_collector

# Numbers, not pass/fail: prints a table and writes bench/results/latest.md (takes minutes).
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(VENV39) run .pytest_cache dist build afmetrics.egg-info
