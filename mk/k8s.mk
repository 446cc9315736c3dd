# jupyter.py against a real Kubernetes API: kube-apiserver built from Debian's kubernetes source package
# (scripts/kube-apiserver). The first build takes about 5 minutes on 2 cores and is cached in
# /var/cache/afmetrics-k8s; after it test-real takes about 25 s, which is why it is part of every `make test`.
# `make unit` leaves these tests out: they run only when asked for with -m k8s_real.
.PHONY: test-real kube-apiserver-build

kube-apiserver-build:
	scripts/kube-apiserver build

test-real: $(STAMP) kube-apiserver-build
	$(PY) -m pytest -q -m k8s_real tests/test_jupyter_real.py

TEST_EXTRA += test-real
