# One image for every part of imagecache: webhook, controller, builder, node mirror
# (`imagecache serve | controller | build | mirror`). Build: make image
ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: a wheel of the project, installed with its dependencies into a venv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
COPY certs ./certs
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install /wheels/*.whl \
 && /opt/venv/bin/imagecache --help

# Runtime stage: the base image and the venv, nothing else (no compiler, no pip in the venv).
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="imagecache" \
      org.opencontainers.image.description="Snapshot-backed container image caches for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# Numeric, so that Kubernetes can check runAsNonRoot without a passwd entry.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["imagecache"]
CMD ["--help"]
