# fedseg site image: Flower's SuperNode and the long-lived fedseg ClientApp (docs/deployment.md, "Containers").
# One image, two containers per hospital (compose.yaml): `flower-supernode` and
# `fedseg flower clientapp`, sharing one network namespace so the Runtime API stays on 127.0.0.1.
# The base install only: no Ray, no matplotlib (fedseg[sim], fedseg[report] are not needed here).
#
#   docker build -f docker/site.Dockerfile -t fedseg-site:0.1.0-cpu .                       # CPU
#   docker build -f docker/site.Dockerfile --build-arg TORCH_VARIANT=cu126 -t fedseg-site:0.1.0-cu126 .
#
# Versions: the base image by tag (pin its digest with `docker buildx imagetools inspect` when you
# mirror it: FROM python:3.11.7-slim-bookworm@sha256:...), torch by TORCH_VERSION (= constraints.txt),
# everything else by constraints.txt. CUDA builds bundle their CUDA libraries; the host needs the
# NVIDIA driver and container toolkit only.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA build of PyTorch's index (cu126, cu128...)
ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FEDSEG_CACHE_DIR=/cache

WORKDIR /opt/fedseg
RUN pip install --index-url https://download.pytorch.org/whl/${TORCH_VARIANT} torch==${TORCH_VERSION}
COPY constraints.txt pyproject.toml README.md ./
COPY src ./src
RUN pip install -c constraints.txt . && python -c "import fedseg.runtime.flower.client_app"

# a non-root user; the data is mounted read-only at /data, the preprocessing cache (arrays derived
# from the images: patient data, stays on the site) on its own volume at /cache
RUN useradd --create-home --uid 10001 fedseg && mkdir -p /cache /data && chown fedseg /cache
USER fedseg
WORKDIR /home/fedseg
VOLUME ["/cache"]
CMD ["fedseg", "--help"]
