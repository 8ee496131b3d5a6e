# Everyday commands. `make help` lists them. CI runs `make test` (= hack/test.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= $(VENV)/bin/python
TOOLS       ?= .tools/bin
HELM        ?= $(TOOLS)/helm
IMAGE       ?= imagecache:dev
CHART       ?= charts/imagecache
# kubernetes-validate ships schemas from 1.28 on; the chart itself supports >= 1.20.
KUBE_VERSION ?= 1.30.0

.PHONY: help test lint image image-oci chart-lint serve-local bench bench-mirror bench-builder bench-node tools

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

test: ## set up everything and run all the tests (what CI runs)
	bash hack/test.sh

lint: ## ruff, mypy --strict, import-linter
	$(VENV)/bin/ruff check webhook certs tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

image: ## build the container image with docker (IMAGE=imagecache:dev)
	docker build -t $(IMAGE) .

image-oci: ## the same image as an OCI archive, no Docker (root: debootstrap); .cache/image/
	bash hack/image.sh

tools: ## helm and kubectl into $(TOOLS)
	bash hack/tools.sh

chart-lint: tools ## helm lint, then render every option and validate the manifests offline
	$(HELM) lint --strict $(CHART)
	@set -euo pipefail; \
	for opts in "" "--set mirror.enabled=true" "--set certManager.enabled=true" \
	            "--set controller.pullSecretNamespaces={team-a,team-b}"; do \
	  echo "== helm template $$opts"; \
	  $(HELM) template imagecache $(CHART) -n imagecache-system --kube-version $(KUBE_VERSION) $$opts \
	    | $(VENV)/bin/kubernetes-validate --strict --quiet -k $(KUBE_VERSION) -; \
	done

serve-local: ## run the webhook on 127.0.0.1:8443 with the example caches
	bash hack/serve-local.sh

bench: ## admission webhook benchmark
	$(PYTHON) bench/admission_bench.py

bench-mirror: ## node mirror vs. a registry (needs docker-registry)
	$(PYTHON) bench/mirror_vs_registry.py

bench-builder: ## builder vs. skopeo (needs docker-registry and skopeo)
	$(PYTHON) bench/builder_vs_skopeo.py

bench-node: ## pod start on a real node: cold pull vs cache vs present (root)
	$(PYTHON) bench/node_bench.py
