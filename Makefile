# Troupe: the two commands a newcomer needs are `make demo` and `make test` (README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Build outputs and caches live under ~/.cache, so a fresh clone reuses them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/troupe/target
CARGO ?= cargo

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: test
test: ## Lint, unit tests, then the end-to-end suite on a local cluster brought up and torn down
	hack/test.sh

.PHONY: demo
demo: ## Bring up the local cluster, install the operator, apply the example, show it working
	hack/demo.sh

.PHONY: lint
lint: ## cargo fmt --check, clippy -D warnings, generated CRDs and reference up to date, docker/Dockerfile agrees with hack/images.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	hack/check-crds.sh
	hack/check-dockerfile.sh
	hack/tests/check-dockerfile-test.sh

.PHONY: unit
unit: ## Unit and loopback multi-node tests, and a few hundred simulation seeds (no cluster needed)
	$(CARGO) test --locked
	SIM_TEST_SEEDS=$${SIM_TEST_SEEDS:-200} $(CARGO) test --locked -p troupe-sim

.PHONY: e2e
e2e: ## End-to-end tests against the running local cluster (make cluster-up first)
	hack/e2e.sh

.PHONY: soak-formation
soak-formation: ## 50 rounds of deleting all 5 pods at once on the running cluster: exactly one cluster each time
	TROUPE_E2E_FORMATION_ROUNDS=$${ROUNDS:-50} RUST_TEST_NOCAPTURE=1 hack/e2e.sh --test node deleting_every_pod_at_once

.PHONY: soak-faults
soak-faults: ## Long fault tests on the running cluster: 60 s API outage, >=150 s of SIGKILL and of graceful chaos, 3 partitions, 5 Lease deletions, 3 rollouts
	TROUPE_E2E_FAULTS_OUTAGE_SECS=$${OUTAGE_SECS:-60} \
	TROUPE_E2E_FAULTS_SIGKILL_SECS=$${SIGKILL_SECS:-180} \
	TROUPE_E2E_FAULTS_DELETES=$${DELETES:-12} \
	TROUPE_E2E_FAULTS_PARTITIONS=$${PARTITIONS:-3} TROUPE_E2E_FAULTS_PARTITION_SECS=$${PARTITION_SECS:-45} \
	TROUPE_E2E_FAULTS_LEASE_DELETES=$${LEASE_DELETES:-5} \
	TROUPE_E2E_FAULTS_ROLLOUTS=$${ROLLOUTS:-3} \
	hack/e2e.sh --test faults -- --include-ignored

.PHONY: soak-durable
soak-durable: ## Durable state on the running cluster: >=150 s of SIGKILL chaos with postgres and (for comparison) memory, PostgreSQL stopped 30 s under load
	TROUPE_E2E_DURABLE_SIGKILL_SECS=$${SIGKILL_SECS:-160} \
	TROUPE_E2E_DURABLE_DB_DOWN_SECS=$${DB_DOWN_SECS:-30} \
	hack/e2e.sh --test durable -- --include-ignored

.PHONY: bench-durable
bench-durable: ## Benchmark: durable (PostgreSQL) vs in-memory asks through one node, side by side
	bench/durable.sh
.PHONY: fuzz
fuzz: ## Every cargo-fuzz target (fuzz/) for SECS seconds each (default 60) from the committed corpus; installs cargo-fuzz, needs nightly
	hack/fuzz.sh $${SECS:-60}

.PHONY: fuzz-smoke
fuzz-smoke: ## The fuzz targets for 10 s each: a smoke run for CI
	hack/fuzz.sh 10

.PHONY: simulate
simulate: ## Deterministic simulation of membership and the actor runtime: SEEDS=N seeds (default 10000), or SEED=n to replay one
	$(CARGO) build --quiet --locked --profile sim -p troupe-sim
	SEEDS=$${SEEDS:-10000} $(CARGO_TARGET_DIR)/sim/troupe-sim

.PHONY: soak-suite
soak-suite: ## The whole e2e suite RUNS times (default 3) on the running cluster; stops at the first failure and says which test and why
	hack/soak-suite.sh $${RUNS:-3}

.PHONY: images
images: ## Build the node, operator and pause images and import them into the local cluster
	hack/images.sh all

.PHONY: cluster-up
cluster-up: ## Bring up the local Kubernetes cluster (root; changes the host, see README)
	hack/cluster-up.sh
	hack/images.sh all

.PHONY: cluster-down
cluster-down: ## Tear the local cluster down and clean the host
	hack/cluster-down.sh

.PHONY: cluster-env
cluster-env: ## Print export lines for eval: KUBECONFIG and the project's kubectl/helm on PATH
	@hack/cluster-env.sh

.PHONY: crds
crds: ## Regenerate crds/ (and the chart's copy) and docs/reference/actorcluster.md from the Rust types
	$(CARGO) run --quiet --locked -p troupe-operator --bin crdgen > crds/actorcluster.yaml
	cp crds/actorcluster.yaml charts/troupe/files/actorcluster.yaml
	$(CARGO) run --quiet --locked -p troupe-operator --bin crddoc > docs/reference/actorcluster.md

.PHONY: check-crd-schema
check-crd-schema: ## kube-apiserver's own CRD validation on crds/ (structural schema, CEL cost), offline (needs the module cache make cluster-up fills)
	hack/check-crd-schema.sh

.PHONY: check-chart
check-chart: ## Lint and render charts/troupe with every option on, promtool on its alerts (needs helm: make cluster-up builds it)
	hack/check-chart.sh

.PHONY: manifests
manifests: ## Render manifests/install.yaml from the chart
	manifests/render.sh
