"""A cache disk mounted after the mirror's last poll is found by the request that needs it
(issue 12: kubelet mounts a pod's disk and containerd pulls a moment later, well within a
poll interval; a miss then looks again before answering 404)."""

from __future__ import annotations

import signal
from pathlib import Path

from mirror_testkit import MirrorProcess, kubelet_mount, make_disk
from registry_fixture import fetch


def test_a_disk_mounted_after_the_last_poll_is_served(tmp_path: Path) -> None:
    root = tmp_path / "pods"
    root.mkdir()
    # An hour between timed polls: only a look on the miss can find the new disk.
    mirror = MirrorProcess(root, tmp_path / "mirror.log", "--poll-interval", "3600")
    try:
        assert fetch(f"{mirror.url}/v2/")[0] == 200
        digest = make_disk(kubelet_mount(root, "uid", "pvc"), "a", "docker.io/library/a:1")
        status, headers, _ = fetch(f"{mirror.url}/v2/library/a/manifests/{digest}")
        assert (status, headers.get("Docker-Content-Digest")) == (200, digest)
        # what no disk holds is still a 404 (after one more look at most)
        missing = "sha256:" + "0" * 64
        assert fetch(f"{mirror.url}/v2/library/a/manifests/{missing}")[0] == 404
    finally:
        mirror.proc.send_signal(signal.SIGTERM)
        assert mirror.stop() == 0
