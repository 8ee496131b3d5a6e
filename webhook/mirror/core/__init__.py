"""The node mirror's pure core: the index of cache disks, the routes it answers, and the
containerd hosts.toml it writes."""
