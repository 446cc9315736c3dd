# slurm.py against a real one-host Slurm cluster (scripts/slurm-cluster): Debian bookworm's slurmctld, slurmd,
# slurmdbd on MariaDB and munge in a chroot, every daemon on 127.0.0.1. tests/test_slurm_cluster.py (marker
# `slurm`) is part of `make unit`: its fixture builds a missing chroot on first use (cached as a tarball in
# /var/cache/afmetrics-slurm, named by its package list) and starts a fresh cluster once per session, so
# nothing joins TEST_EXTRA. `make test-slurm` runs the slurm tests alone (test_slurm_private_data.py too: slurm.py
# as an unprivileged user under PrivateData).
.PHONY: slurm-cluster-image test-slurm

slurm-cluster-image:
	scripts/slurm-cluster build

test-slurm: $(STAMP)
	$(PY) -m pytest -q tests/test_slurm.py tests/test_slurm_cluster.py tests/test_slurm_private_data.py
