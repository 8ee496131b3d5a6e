"""The node snapshotter: a containerd proxy snapshotter (DESIGN.md, "Node snapshotter")."""
