# Omega VLM service. `make run` and `make test` set everything up on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# on a machine without a GPU to avoid downloading the CUDA build.
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.omega-installed

.PHONY: setup run test test-failover lint typecheck unit models supported-models bench demo-model clean system-deps

# Python venv support and redis-server are the only system packages needed.
system-deps:
	@scripts/system-deps.sh

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned, so nothing later pulls a different (CUDA) build.
	$(PY) -m pip install "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -e ".[worker,dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	exec $(PY) -m omega_vlm.cli up

demo-model: setup
	$(PY) -m omega_vlm.cli make-demo-model

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Test files run in parallel on pytest-xdist workers, one file per unit (tests/conftest.py says why and
# which files go first). On 2 cores the run is CPU-bound: 2, 3 and 4 workers measured within noise of
# each other; TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 4
XDIST_ARGS := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The linters run beside the tests (mypy keeps one core busy for ~20 s while pytest starts its
# workers); their output is printed after the tests', and either failing fails `make test`.
test: setup
	@mkdir -p .omega; rm -f .omega/lint.log .omega/lint.rc
	@( $(MAKE) --no-print-directory lint > .omega/lint.log 2>&1; echo $$? > .omega/lint.rc ) & lint=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST_ARGS) $(PYTEST_ARGS); tests=$$?; \
	wait $$lint; cat .omega/lint.log; lint_rc=$$(cat .omega/lint.rc); \
	if [ "$$lint_rc" != 0 ]; then echo "make test: the linters failed (above)"; fi; \
	[ "$$tests" = 0 ] && [ "$$lint_rc" = 0 ]

# The Sentinel failover test alone (it is also part of `make test`).
test-failover: setup
	$(PY) -m pytest -q -p no:cacheprovider -m failover $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The model-family matrix (also part of `make test`) and the README table generated from it.
models: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/models $(PYTEST_ARGS)

supported-models: setup
	$(PY) -m workers.tiny_models.table --write

bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# The issue-10 peer, `transformers serve`, beside this service (benchmarks/peer.py, written to
# benchmarks/peer_results.md, which BENCHMARKS.md includes). What it needs beyond the project's
# environment goes into PEER_DEPS with pip --target, never into the venv; the pins are the versions
# it was measured with. PEER_ARGS: e.g. --rounds 3, --quick.
.PHONY: bench-peer
PEER_DEPS ?= .omega/peer-deps
PEER_PACKAGES ?= fastapi==0.165.0 starlette==1.10.0 accelerate==1.15.0 opentelemetry-api==1.45.2 psutil==7.2.2
$(PEER_DEPS)/.installed:
	$(PY) -m pip install --no-deps --target $(PEER_DEPS) $(PEER_PACKAGES)
	touch $@

bench-peer: setup $(PEER_DEPS)/.installed
	$(PY) -m benchmarks.peer --peer-path $(PEER_DEPS) $(PEER_ARGS)

clean:
	rm -rf $(VENV) .omega .pytest_cache .mypy_cache .ruff_cache
