# The Ansible role: ansible-lint (production profile) and Molecule on disposable Debian 11, 12 and 13 containers.
# Their tools come from requirements-ansible.txt, installed into the project venv only for these targets.
.PHONY: lint-ansible molecule

ANSIBLE_STAMP := $(VENV)/.installed-ansible

$(ANSIBLE_STAMP): $(STAMP) requirements-ansible.txt
	$(PY) -m pip install -q -r requirements-ansible.txt
	touch $@

lint-ansible: $(ANSIBLE_STAMP)
	. $(VENV)/bin/activate && ansible-lint --profile production

# molecule/wheels installs from the controller's wheels, downloaded with mk/py39.mk's PYTHON39 for its Debian 11.
# Builds (first time, about 3 minutes, the three releases at once) or loads the cached base images, starts dockerd
# when needed; outside CI a machine that cannot run containers gets one line saying Molecule was skipped.
molecule: $(ANSIBLE_STAMP)
	VENV=$(VENV) AFMETRICS_MOLECULE_PYTHON39=$(PYTHON39) scripts/molecule-test

TEST_EXTRA += lint-ansible molecule
