# ragcluster-shard: the FAISS shard server (`python -m shard_server`): FAISS, SQLite, grpc, numpy; no torch.
#   docker build -f deploy/docker/shard.Dockerfile -t ragcluster-shard:0.1.0 .
# BASE_IMAGE must be Debian bookworm with python3 (3.11) and its venv module: python:3.11-slim-bookworm
# where a registry is reachable, or the local image deploy/docker/make-base.sh makes.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# pip_ca (optional build secret): a CA bundle for a TLS-intercepting proxy in front of PyPI; it is
# mounted only while pip runs and never lands in a layer
# 1. the pinned dependency closure into the runtime venv (this layer changes only with the lock file)
COPY deploy/docker/requirements/shard.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/ragcluster \
 && /opt/ragcluster/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.txt
# 2. a throw-away venv with a pinned setuptools to build ragcluster's wheel
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir setuptools==78.1.1 wheel==0.45.1
# 3. ragcluster itself (pip leaves compiled .pyc files: the root file system is read-only at run time),
#    then pip (and setuptools where nothing needs it) leave the runtime venv
COPY pyproject.toml README.md /src/
COPY ragcluster /src/ragcluster
COPY shard_server /src/shard_server
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /tmp/dist /src \
 && /opt/ragcluster/bin/pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
 && /opt/ragcluster/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/ragcluster/bin/python -c "import faiss, grpc, shard_server.__main__"

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 ragcluster \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin ragcluster \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /opt/ragcluster /opt/ragcluster
# every flag is also a RAGCLUSTER_* variable; these are the container defaults
ENV PATH=/opt/ragcluster/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    RAGCLUSTER_HOST=0.0.0.0 RAGCLUSTER_PORT=7000 RAGCLUSTER_METRICS_PORT=9090 \
    RAGCLUSTER_LOG_JSON=true RAGCLUSTER_DATA_DIR=/data
WORKDIR /data
# labels last: a new revision does not rebuild the layers above
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ragcluster-shard" \
      org.opencontainers.image.description="ragcluster FAISS shard server (python -m shard_server)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ragcluster/ragcluster" \
      org.opencontainers.image.vendor="ragcluster"
USER 10001:10001
EXPOSE 7000 9090
ENTRYPOINT ["python", "-m", "shard_server"]
