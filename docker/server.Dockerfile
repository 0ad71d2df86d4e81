# fedseg server image: Flower's SuperLink (`fedseg flower superlink`), which starts the fedseg
# ServerApp for each run, and the `flwr` CLI (docs/deployment.md, "Containers"). With
# fedseg[report] (matplotlib) for the report written at the end of a run; no Ray.
#
#   docker build -f docker/server.Dockerfile -t fedseg-server:0.1.0-cpu .
#   docker build -f docker/server.Dockerfile --build-arg TORCH_VARIANT=cu126 -t fedseg-server:0.1.0-cu126 .
#
# The server holds no images; CPU is enough unless the ServerApp evaluates a large model.
# Versions: as docker/site.Dockerfile (base image tag, TORCH_VERSION = constraints.txt, constraints.txt).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_HOME=/home/fedseg/.flwr

WORKDIR /opt/fedseg
RUN pip install --index-url https://download.pytorch.org/whl/${TORCH_VARIANT} torch==${TORCH_VERSION}
COPY constraints.txt pyproject.toml README.md ./
COPY src ./src
RUN pip install -c constraints.txt ".[report]" && python -c "import fedseg.runtime.flower.server_app"

# a non-root user; certificates are mounted read-only at /certs, run directories at /runs
RUN useradd --create-home --uid 10001 fedseg && mkdir -p /runs /certs /home/fedseg/.flwr \
    && chown fedseg /runs /certs /home/fedseg/.flwr
USER fedseg
WORKDIR /home/fedseg
VOLUME ["/runs"]
EXPOSE 9093
CMD ["fedseg", "--help"]
