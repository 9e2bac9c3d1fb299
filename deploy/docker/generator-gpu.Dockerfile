# ragcluster-generator (GPU): the generator node (`python -m generator_node`) on the official vLLM image
# (CUDA, torch and vllm inside). Model weights come from a mounted volume (--model /models/NAME, env
# RAGCLUSTER_MODEL): nothing is downloaded at start.
#   docker build -f deploy/docker/generator-gpu.Dockerfile -t ragcluster-generator:0.1.0 .
# VLLM_IMAGE: the official image of the vLLM release whose Python API the node uses (AsyncLLM,
# AsyncEngineArgs, SamplingParams); pin it by digest in production (vllm/vllm-openai@sha256:...).
# Not built by `make deploy-test` (no GPU and no registry there); the CPU variant is.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${VLLM_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /src/
COPY ragcluster /src/ragcluster
COPY generator_node /src/generator_node
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir setuptools==78.1.1 wheel==0.45.1 \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /tmp/dist /src

FROM ${VLLM_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/docker/requirements/generator-gpu.txt /tmp/requirements.txt
# the wheel is bind-mounted from the build stage: it never lands in a layer of this image
RUN --mount=type=secret,id=pip_ca --mount=type=bind,from=build,source=/tmp/dist,target=/dist \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
 && python3 -m pip install --no-cache-dir --no-deps /dist/*.whl \
 && python3 -m pip check \
 && python3 -c "import vllm, generator_node.__main__" \
 && rm /tmp/requirements.txt \
 && groupadd --system --gid 10001 ragcluster \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin ragcluster
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf \
    VLLM_NO_USAGE_STATS=1 VLLM_CACHE_ROOT=/tmp/vllm \
    RAGCLUSTER_HOST=0.0.0.0 RAGCLUSTER_PORT=7100 RAGCLUSTER_METRICS_PORT=9090 RAGCLUSTER_LOG_JSON=true
WORKDIR /tmp
# labels last: a new revision does not rebuild the layers above
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ragcluster-generator" \
      org.opencontainers.image.description="ragcluster generator node (python -m generator_node) on the official vLLM CUDA image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ragcluster/ragcluster" \
      org.opencontainers.image.vendor="ragcluster"
USER 10001:10001
EXPOSE 7100 9090
ENTRYPOINT ["python3", "-m", "generator_node"]
