"""The node snapshotter's pure core: which layer a snapshot comes from, and the containerd
configuration it edits."""
