# syntax=docker/dockerfile:1
# bptrain: the API (`bptrain serve`) and the Ray nodes (`ray start`) of the compose cluster.
#   docker build -t bptrain:0.1.0 .                          # CPU (NumPy)
#   docker build -t bptrain:0.1.0-gpu --build-arg VARIANT=gpu .   # + CuPy and the CUDA libraries
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtual environment with bptrain and Ray, nothing else ---------------------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG RAY_VERSION=2.60.0
ARG CUPY_VERSION=14.2.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bptrain ./bptrain
COPY services ./services
COPY worker ./worker
# ray[default] brings the dashboard and the metrics agent that `ray start --head` runs.
RUN pip install --no-cache-dir "ray[default]==${RAY_VERSION}" ./ \
    && case "${VARIANT}" in \
         cpu) ;; \
         gpu) pip install --no-cache-dir "cupy-cuda12x[ctk]==${CUPY_VERSION}" ;; \
         *) echo "VARIANT must be cpu or gpu, got ${VARIANT}" >&2; exit 1 ;; \
       esac

# --- runtime: the environment, a non-root user, no compilers, no sudo --------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="bptrain" \
      org.opencontainers.image.description="Distributed neural-network training over gRPC on Ray" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.bptrain.variant="${VARIANT}"
RUN groupadd --system --gid 10001 bptrain \
    && useradd --system --uid 10001 --gid bptrain --create-home --home-dir /home/bptrain \
       --shell /usr/sbin/nologin bptrain \
    && mkdir -p /data \
    && chown bptrain:bptrain /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0
USER 10001:10001
WORKDIR /home/bptrain
# gRPC API, Prometheus /metrics
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python", "-m", "services.probe", "grpc", "127.0.0.1:50051"]
CMD ["bptrain", "serve", "--host", "0.0.0.0", "--storage", "/data/bptrain"]
