#!/usr/bin/env bash
# Builds the image the chart deploys (every part: webhook, controller, builder, node mirror,
# helm test) as an OCI archive, without Docker or a registry, from Debian packages and PyPI only:
# debootstrap minbase bookworm + python3, a venv /opt/venv with the project's wheel and its
# dependencies, user 65532:65532 (the chart's runAsUser), entrypoint `imagecache`, as the
# Dockerfile does. Reproducible: same inputs, same digest (fixed mtimes = SOURCE_DATE_EPOCH,
# sorted tar, numeric owners, gzip without time, pycs by unchecked hash, logs and caches removed).
#
# Usage: hack/image.sh [OUT.tar]       prints the archive path last; needs root (debootstrap, chroot)
#   ctr -n k8s.io images import OUT.tar      skopeo copy oci-archive:OUT.tar docker://HOST/imagecache:TAG
# Env: IMAGE_NAME (localhost/imagecache:dev), IMAGE_CACHE_DIR (<repo>/.cache/image: base rootfs and
#   finished archives, keyed by their inputs, so a second run with the same inputs costs seconds),
#   DEBIAN_MIRROR (http://deb.debian.org/debian), DEBIAN_SUITE (bookworm), SOURCE_DATE_EPOCH (0),
#   PYTHON (python3 with pip: makes the wheels, so pip never runs with the network inside the chroot).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
name=${IMAGE_NAME:-localhost/imagecache:dev}
cache=${IMAGE_CACHE_DIR:-$repo/.cache/image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${DEBIAN_SUITE:-bookworm}
epoch=${SOURCE_DATE_EPOCH:-0}
python=${PYTHON:-python3}
out=${1:-$cache/imagecache.tar}
log() { echo "[image $(date +%T)] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "hack/image.sh: needs root (debootstrap and chroot); run it with sudo" >&2; exit 1; }
command -v debootstrap >/dev/null || { log "apt-get install debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
mkdir -p "$cache"
# One build at a time per cache dir (two test sessions may start together); the archive is
# replaced by rename, so a reader never sees half of it.
exec 9>"$cache/.lock"; flock 9
# Commands in a chroot get a clean environment (none of the host's pip or proxy settings).
inroot() { local r=$1; shift; chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LC_ALL=C.UTF-8 TZ=UTC SOURCE_DATE_EPOCH="$epoch" PYTHONHASHSEED=0 "$@"; }
export SOURCE_DATE_EPOCH=$epoch LC_ALL=C.UTF-8 TZ=UTC

# The packages of the base, with what the node agent uses (mount/umount from util-linux and
# mount, already essential in minbase; ca-certificates for registries with public TLS).
packages=python3,python3-venv,ca-certificates
base_key=$(printf '%s\n' "$suite" "$mirror" "$packages" "$(sed -n '/^# --- base/,/^# --- end base/p' "$0")" | sha256sum | cut -c1-16)
base=$cache/base-$base_key

# --- base: debootstrap minbase + python3 (cached by its inputs) --------------------------------
if [ ! -f "$base/.done" ]; then
  log "debootstrap $suite ($packages) into $base"
  rm -rf "$base"; mkdir -p "$base"
  debootstrap --variant=minbase --include="$packages" "$suite" "$base/rootfs" "$mirror" > "$base/debootstrap.log" 2>&1 \
    || { tail -20 "$base/debootstrap.log" >&2; exit 1; }
  # shellcheck disable=SC2016  # dpkg-query's own format, not the shell's
  inroot "$base/rootfs" dpkg-query -W -f '${Package}=${Version}\n' | sort > "$base/packages.txt"
  touch "$base/.done"
fi
# --- end base

# --- wheels: the project and its dependencies, made by the host's pip (its index and CA) -------
work=$(mktemp -d "$cache/work.XXXXXX"); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels" "$work/src"
# Only what the wheel is built from, so that editor files or .venv never change the result.
tar -C "$repo" --exclude=__pycache__ --exclude="*.pyc" --exclude="*.egg-info" -cf - pyproject.toml README.md webhook certs \
  | tar -C "$work/src" -xf -
log "pip wheel (project and dependencies)"
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2; return "${PIPESTATUS[0]}"; }
quiet "$python" -m pip wheel -q --wheel-dir "$work/wheels" "$work/src"
quiet "$python" -m pip download -q --no-deps --only-binary=:all: --dest "$work/wheels" pip
# The project's own wheel varies with build time; its installed files do not: key on the sources.
src_key=$(cd "$work/src" && find . -type f | sort | xargs sha256sum | sha256sum | cut -c1-16)
deps_key=$(cd "$work/wheels" && find . -maxdepth 1 -type f ! -name 'imagecache-*' | sort | xargs sha256sum \
  | sha256sum | cut -c1-16)
key=$(printf '%s\n' "$base_key" "$(cat "$base/packages.txt")" "$src_key" "$deps_key" "$name" "$epoch" \
  "$(sha256sum "$0" "$repo/hack/oci_archive.py")" | sha256sum | cut -c1-16)
if [ -f "$cache/image-$key.tar" ]; then
  log "unchanged inputs (key $key): reusing $cache/image-$key.tar"
else
  # --- rootfs: base + venv, then made reproducible ----------------------------------------------
  root=$work/rootfs
  cp -a "$base/rootfs" "$root"
  cp -r "$work/wheels" "$root/tmp/wheels"
  log "venv /opt/venv in the chroot"
  inroot "$root" /usr/bin/python3 -m venv --without-pip /opt/venv
  # pip runs from its wheel, offline, and does not stay in the image (as in the Dockerfile).
  # shellcheck disable=SC2016  # expanded by the chroot's sh
  inroot "$root" sh -c 'set -- /tmp/wheels/pip-*.whl; PIP_NO_CACHE_DIR=1 /opt/venv/bin/python "$1/pip" install -q \
    --no-index --find-links /tmp/wheels --no-compile --disable-pip-version-check imagecache' >&2
  inroot "$root" /opt/venv/bin/imagecache --help >/dev/null
  rm -rf "$root/tmp/wheels"
  # A user for the uid the chart runs as (numeric in the config: runAsNonRoot needs no passwd).
  grep -q '^imagecache:' "$root/etc/passwd" || {
    echo 'imagecache:x:65532:65532:imagecache:/nonexistent:/usr/sbin/nologin' >> "$root/etc/passwd"
    echo 'imagecache:x:65532:' >> "$root/etc/group"; }
  # Non-reproducible leftovers: logs, caches, apt lists, backups, shadow's "last changed" day.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/ldconfig/aux-cache \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/root/.cache "$root"/tmp/* \
    "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id "$root"/etc/*-
  find "$root/var/log" -type f -delete
  sed -i -E 's/^([^:]*:[^:]*:)[0-9]*:/\1'$((epoch / 86400))':/' "$root/etc/shadow"
  # Bytecode by hash, so it stays valid whatever the files' mtimes and a read-only root needs
  # no writes at start-up.
  find "$root" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
  inroot "$root" /usr/bin/python3 -m compileall -q -j0 --invalidation-mode unchecked-hash \
    /usr/lib/python3 /usr/lib/python3.11 /opt/venv/lib >/dev/null 2>&1 || true
  find "$root" -xdev -exec touch -h -d "@$epoch" {} +
  config=$(printf '{"User": "65532:65532", "WorkingDir": "/tmp", "Entrypoint": ["imagecache"], "Cmd": ["--help"], "Env": %s, "Labels": %s}' \
    '["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"]' \
    '{"org.opencontainers.image.title": "imagecache", "org.opencontainers.image.description": "Snapshot-backed container image caches for Kubernetes", "org.opencontainers.image.licenses": "Apache-2.0"}')
  log "writing the OCI archive"
  digest=$("$python" "$repo/hack/oci_archive.py" "$root" "$work/image.tar" --name "$name" --config-json "$config" --epoch "$epoch")
  echo "$digest" > "$cache/image-$key.digest"
  mv "$work/image.tar" "$cache/image-$key.tar"
  log "built $name $digest ($(du -m "$cache/image-$key.tar" | cut -f1) MiB, key $key)"
  # keep the newest few archives only
  find "$cache" -maxdepth 1 -name 'image-*.tar' -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- \
    | while read -r old; do rm -f "$old" "${old%.tar}.digest"; done
fi
if [ "$out" != "$cache/image-$key.tar" ]; then
  cp "$cache/image-$key.tar" "$out.tmp" && mv "$out.tmp" "$out"
fi
cp "$cache/image-$key.digest" "$out.digest.tmp" && mv "$out.digest.tmp" "$out.digest"
echo "$out"
