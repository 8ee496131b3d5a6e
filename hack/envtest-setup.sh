#!/usr/bin/env bash
# The real control plane of the envtest tests, as controller-runtime's envtest takes it: a
# directory named by KUBEBUILDER_ASSETS holding etcd, kube-apiserver, kube-controller-manager.
# A KUBEBUILDER_ASSETS already set (e.g. by `setup-envtest use 1.20.x -p path`) is used as it
# is; otherwise .envtest/ is laid out from $IMAGECACHE_SHARED/envtest (default ../shared, see
# its README.md on this project's machines). Idempotent. Prints the directory to export.
set -euo pipefail
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${IMAGECACHE_SHARED:-$root/../shared}"
dest="$root/.envtest"
mkdir -p "$dest"
if ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y etcd-server >/dev/null || { apt-get update >/dev/null && apt-get install -y etcd-server >/dev/null; }
  else
    echo "envtest-setup: etcd is missing: apt-get install -y etcd-server" >&2
    exit 1
  fi
fi
for b in kube-apiserver kube-controller-manager; do
  if [ ! -x "$dest/$b" ]; then
    src="$shared/envtest/$b.gz"
    [ -f "$src" ] || { echo "envtest-setup: $src is missing: set IMAGECACHE_SHARED, or KUBEBUILDER_ASSETS (README: the test control plane)" >&2; exit 1; }
    gunzip -c "$src" > "$dest/$b.tmp"
    chmod +x "$dest/$b.tmp"
    mv "$dest/$b.tmp" "$dest/$b"
  fi
done
ln -sf "$(command -v etcd)" "$dest/etcd"
echo "$dest"
