#!/usr/bin/env bash
# Regenerates webhook/snapshotter/api/*_pb2*.py from the .proto files beside them (committed, so
# the runtime needs grpcio and protobuf only, not grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/../webhook/snapshotter/api"
python=${PYTHON:-../../../.venv/bin/python}
include=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
for proto in snapshots containerd_clients cri_images; do
  "$python" -m grpc_tools.protoc -I. -I"$include" --python_out=. --pyi_out=. --grpc_python_out=. "$proto.proto"
  # The generated stub imports its messages as a top-level module; make it package-relative.
  sed -i "s/^import ${proto}_pb2 as ${proto//_/__}__pb2\$/from . import ${proto}_pb2 as ${proto//_/__}__pb2/" "${proto}_pb2_grpc.py"
done
