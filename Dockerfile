# syntax=docker/dockerfile:1
#
# Images of the three specdec services, one target each:
#
#   docker build --target router   -t specdec/router:0.1.0   .   # CPU, no torch
#   docker build --target draft    -t specdec/draft:0.1.0    .   # CUDA torch
#   docker build --target verifier -t specdec/verifier:0.1.0 .   # CUDA torch
#
# Each runs as user 10001 with `specdec serve <role>` as its entrypoint; arguments go after it
# (the Helm chart passes them). Model weights are never baked in: mount them (see helm/specdec).
#
# torch comes from its PyPI wheel (pinned in pyproject.toml, extra `engine`), which bundles the
# CUDA runtime libraries; the node's NVIDIA driver is injected by the NVIDIA container runtime.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: generate the gRPC code with `make protos` and build the specdec wheel -------------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md Makefile ./
COPY protos/ protos/
COPY services/ services/
# `make protos` needs only grpcio-tools: give it a .venv with that and mark the venv installed
# so make does not install the full dev set (torch included) into the build stage.
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir "grpcio-tools==1.85.1" \
    && touch .venv/.installed-stamp \
    && make protos \
    && .venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- base: the unprivileged user shared by every image -----------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
RUN groupadd --gid 10001 specdec \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin specdec
WORKDIR /tmp

# ---- router: the public API; grpcio, protobuf, tokenizers, redis; no torch ----------------------
FROM base AS router
COPY --from=build /wheels/ /wheels/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --no-cache-dir /wheels/specdec-*.whl \
    && rm -rf /wheels \
    && ! python -c "import torch" 2>/dev/null
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["specdec", "serve", "router"]

# ---- engine: CUDA torch for the draft and verifier ------------------------------------------------
FROM base AS engine
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A C compiler, for torch.compile and Triton's launcher stubs should a model be compiled (the
# engine runs eagerly today; oneDNN and cuBLAS need no compiler).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels/ /wheels/
# The local specdec wheel; torch==2.13.0 is pinned by its `engine` extra in pyproject.toml.
# hadolint ignore=DL3013
RUN wheel="$(echo /wheels/specdec-*.whl)" \
    && pip install --no-cache-dir "${wheel}[engine]" \
    && rm -rf /wheels \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# ---- draft: proposes tokens (draft model, or n-gram prompt lookup without one) ------------------
FROM engine AS draft
USER 10001:10001
EXPOSE 50053 9090
ENTRYPOINT ["specdec", "serve", "draft"]

# ---- verifier: the target model, authoritative -------------------------------------------------
FROM engine AS verifier
USER 10001:10001
EXPOSE 50052 9090
ENTRYPOINT ["specdec", "serve", "verifier"]
