#!/usr/bin/env bash
# Regenerates webhook/snapshotter/api/snapshots_pb2*.py from snapshots.proto (committed, so
# the runtime needs grpcio and protobuf only, not grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/../webhook/snapshotter/api"
python=${PYTHON:-../../../.venv/bin/python}
include=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
"$python" -m grpc_tools.protoc -I. -I"$include" --python_out=. --pyi_out=. --grpc_python_out=. snapshots.proto
# The generated stub imports its messages as a top-level module; make it package-relative.
sed -i 's/^import snapshots_pb2 as snapshots__pb2$/from . import snapshots_pb2 as snapshots__pb2/' snapshots_pb2_grpc.py
