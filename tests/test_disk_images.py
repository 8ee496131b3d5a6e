"""webhook.snapshotter.core.disk_images:
which images came in part from a cache disk (rolling back the
node snapshotter). The end-to-end case, on the real node, is
tests/node/test_node_4_snapshotter.py::test_rolling_back_leaves_the_node_ready_with_its_pods."""

from __future__ import annotations

import json

import pytest

from webhook.core.layer_chain import InvalidConfig, chain_ids
from webhook.snapshotter.core.disk_images import images_from_disks, status_diff_ids

A, B, C = ("sha256:" + c * 64 for c in "abc")


def test_an_image_with_any_layer_from_a_disk_is_named() -> None:
    images = {"img-ab": [A, B], "img-ac": [A, C], "img-c": [C]}
    # the disk held the second layer of img-ab only: img-ac shares the first layer, which
    # came from the registry, and img-c's lone layer C is another chain than img-ac's A->C
    assert images_from_disks(images, {chain_ids([A, B])[1]}) == ["img-ab"]
    assert images_from_disks(images, {A}) == ["img-ab", "img-ac"]
    assert images_from_disks(images, {C}) == ["img-c"]
    assert images_from_disks(images, set()) == []


def test_diff_ids_come_from_containerds_verbose_image_status() -> None:
    info = json.dumps({"chainID": B, "imageSpec": {"rootfs": {"type": "layers",
                                                              "diff_ids": [A, B]}}})
    assert status_diff_ids(info, "img") == (A, B)
    with pytest.raises(InvalidConfig, match="img: CRI ImageStatus info has no imageSpec"):
        status_diff_ids("{}", "img")
    with pytest.raises(InvalidConfig, match="img: CRI ImageStatus info is not JSON"):
        status_diff_ids("", "img")
    with pytest.raises(InvalidConfig, match=r"no rootfs\.diff_ids"):
        status_diff_ids(json.dumps({"imageSpec": {"rootfs": {}}}), "img")
