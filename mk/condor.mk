# condor.py against a real personal HTCondor pool (scripts/condor-pool): Debian's condor + minicondor in a
# chroot, every daemon on 127.0.0.1. tests/test_condor_pool.py (marker `condor`) is part of `make unit`: its
# fixture builds a missing chroot on first use (trixie about 30 s, sid about 55 s; cached as tarballs in
# /var/cache/afmetrics-condor) and then takes about 90 s per HTCondor version, so nothing joins TEST_EXTRA.
# AFMETRICS_CONDOR_SUITES chooses the versions: "trixie sid" (23.x and 25.x, the default) or one of them.
.PHONY: condor-pool-image test-condor

condor-pool-image:
	scripts/condor-pool build trixie
	scripts/condor-pool build sid

test-condor: $(STAMP)
	$(PY) -m pytest -q -m condor tests/test_condor_pool.py
