"""The builder: pulls a cache's images from registries into an OCI layout (imagecache build)."""
