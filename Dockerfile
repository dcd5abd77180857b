# bptrain: the API (`bptrain serve`) and the Ray nodes (`ray start`) of the compose cluster.
#   docker build -t bptrain:0.1.0 .                          # CPU (NumPy)
#   docker build -t bptrain:0.1.0-gpu --build-arg VARIANT=gpu .   # + CuPy and the CUDA libraries
# Air-gapped (no Docker Hub, no PyPI): any Debian-like Python 3.11 image as the base, and the
# wheels of everything the image installs in a folder of the build context (README, "Running
# as a cluster"; `make cluster-up` does both here):
#   docker build --build-arg PYTHON_IMAGE=my-registry/python:3.11 \
#                --build-arg WHEELHOUSE=.cluster/wheelhouse -t bptrain:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtual environment with bptrain and Ray, nothing else ---------------------------
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG RAY_VERSION=2.60.0
ARG CUPY_VERSION=14.2.0
# A folder of the build context (deploy/wheelhouse/README.md).
ARG WHEELHOUSE=deploy/wheelhouse
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /src
# With wheels in WHEELHOUSE, every pip below installs from them alone (an air-gapped build).
COPY ${WHEELHOUSE}/ /wheelhouse/
RUN if compgen -G "/wheelhouse/*.whl" >/dev/null; then \
         printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' >/etc/pip.conf; \
       fi
# The dependencies in a layer of their own, which a change to the code leaves cached;
# ray[default] brings the dashboard and the metrics agent that `ray start --head` runs.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        >/tmp/requirements.txt \
    && pip install --no-cache-dir "ray[default]==${RAY_VERSION}" -r /tmp/requirements.txt \
    && case "${VARIANT}" in \
         cpu) ;; \
         gpu) pip install --no-cache-dir "cupy-cuda12x[ctk]==${CUPY_VERSION}" ;; \
         *) echo "VARIANT must be cpu or gpu, got ${VARIANT}" >&2; exit 1 ;; \
       esac
COPY bptrain ./bptrain
COPY services ./services
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps ./

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
