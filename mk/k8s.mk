# jupyter.py and the least-privilege access of deploy/kubernetes against a real Kubernetes: kube-apiserver and
# kube-controller-manager built from Debian's kubernetes source package, with Debian's kubectl of the same
# release (scripts/kube-apiserver). The first build takes about 6-7 minutes on 2 cores
# (kube-controller-manager adds about a third to kube-apiserver's) and is cached in
# /var/cache/afmetrics-k8s; after it test-real takes
# about 2 minutes (tests/test_kubernetes_rbac.py about 1.5 of them), which is why it is part of every `make test`.
# `make unit` leaves these tests out: they run only when asked for with -m k8s_real.
.PHONY: test-real kube-apiserver-build

kube-apiserver-build:
	scripts/kube-apiserver build

test-real: $(STAMP) kube-apiserver-build
	$(PY) -m pytest -q -m k8s_real tests/test_jupyter_real.py tests/test_kubernetes_rbac.py

TEST_EXTRA += test-real
