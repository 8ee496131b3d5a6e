#!/usr/bin/env bash
# Lays out a real control plane for the envtest tests (see /work/shared/envtest/README.md):
# .envtest/{etcd,kube-apiserver,kube-controller-manager}. Idempotent: binaries already in
# place are kept. Prints the directory to export as KUBEBUILDER_ASSETS.
set -euo pipefail
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
    [ -f "$src" ] || { echo "envtest-setup: $src is missing" >&2; exit 1; }
    gunzip -c "$src" > "$dest/$b.tmp"
    chmod +x "$dest/$b.tmp"
    mv "$dest/$b.tmp" "$dest/$b"
  fi
done
ln -sf "$(command -v etcd)" "$dest/etcd"
echo "$dest"
