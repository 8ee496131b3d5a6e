# One image for every part of imagecache: webhook, controller, builder, node mirror
# (`imagecache serve | controller | build | mirror`). Build: make image
# The same image as hack/image.sh builds without Docker: Debian bookworm's python3, a venv
# /opt/venv with the project's wheel and its dependencies, user 65532, entrypoint imagecache.
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
 && echo 'imagecache:x:65532:65532:imagecache:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'imagecache:x:65532:' >> /etc/group

# Build stage: a wheel of the project, installed with its dependencies into a venv.
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
COPY certs ./certs
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels . \
 && python3 -m venv --without-pip /opt/venv \
 && /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --find-links /wheels imagecache \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv/lib \
 && /opt/venv/bin/imagecache --help

# Runtime stage: the base and the venv, nothing else (no compiler, no pip in the venv).
FROM base
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
