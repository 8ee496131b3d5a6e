#!/usr/bin/env bash
# Runs the admission webhook locally, over TLS on 127.0.0.1:8443, answering from the embedded
# example caches (no cluster needed). Sets up .venv and certificates in local/certs first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q -e . 2>&1 | grep -v '^WARNING' || true
if [ ! -f local/certs/tls.crt ]; then
  .venv/bin/imagecache certs generate --out local/certs --dns localhost --ip 127.0.0.1
fi
echo "webhook: https://127.0.0.1:${PORT:-8443}/mutate  (CA: local/certs/ca.crt; Ctrl-C stops)"
exec .venv/bin/imagecache serve --listen "127.0.0.1:${PORT:-8443}" \
  --tls-cert local/certs/tls.crt --tls-key local/certs/tls.key --caches default "$@"
