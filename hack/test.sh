#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine and runs them all:
# Debian packages (etcd, docker-registry, skopeo, containerd), a venv with the project and its
# dev tools, helm and kubectl, the envtest control plane; then lint, types, layers, pytest.
# Extra arguments go to pytest (e.g. hack/test.sh -k matching).
set -euo pipefail
cd "$(dirname "$0")/.."

# The node tests (tests/node) also need what ../shared/node/node-up.sh runs and hack/image.sh
# builds with: runc, CNI plugins, busybox, gcc (the pause image), iptables, debootstrap.
debs=(etcd-server docker-registry skopeo containerd apache2-utils runc containernetworking-plugins
      busybox-static gcc libc6-dev iptables debootstrap shellcheck)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "== not root: tests that need ${missing[*]} will skip (install them with apt-get)" >&2
  fi
fi
# Debian starts these as services; the tests start their own instances on free ports.
for svc in containerd docker-registry etcd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
echo "== installing the project and its dev tools into .venv"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING' || true
bash hack/tools.sh
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
KUBEBUILDER_ASSETS="$(bash hack/envtest-setup.sh | tail -n 1)"
export KUBEBUILDER_ASSETS

echo "== ruff"
ruff check webhook certs tests bench
echo "== mypy --strict"
mypy
echo "== import-linter (functional core stays pure)"
lint-imports
echo "== pytest"
exec pytest -q -p no:cacheprovider "$@"
