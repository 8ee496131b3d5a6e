"""imagecache: snapshot-backed container image caches for Kubernetes."""
