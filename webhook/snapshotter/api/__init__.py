"""containerd's snapshots API, generated from snapshots.proto (hack/gen-snapshots-api.sh)."""
