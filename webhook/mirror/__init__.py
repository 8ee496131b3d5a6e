"""The node mirror: a read-only OCI distribution server for containerd (imagecache mirror)."""
