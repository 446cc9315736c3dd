# The Ansible role: ansible-lint (production profile) and Molecule on disposable Debian 11, 12 and 13 containers.
# Their tools come from requirements-ansible.txt, installed into the project venv for these targets and `make unit`
# (tests/test_collection.py).
.PHONY: lint-ansible molecule collection

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

# The role as the collection atlas_analytics.afmetrics (galaxy.yml says what goes in and why):
# $(COLLECTION_DIR)/atlas_analytics-afmetrics-VERSION.tar.gz, for `ansible-galaxy collection install`; nothing
# else is written into the checkout. tests/test_collection.py (part of `make unit`, which therefore installs
# requirements-ansible.txt too) builds and installs it and checks a site's playbook that names the role by its
# full name.
COLLECTION_DIR ?= dist

collection: $(ANSIBLE_STAMP)
	@. $(VENV)/bin/activate && ansible-galaxy collection build --force --output-path "$(COLLECTION_DIR)" .
