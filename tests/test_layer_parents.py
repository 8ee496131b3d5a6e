"""webhook.snapshotter.core.layer_parents:
a disk-backed layer's parent, from imagecache.json (what the
snapshotter needs to make a record a power cut lost again)."""

from __future__ import annotations

import hashlib

from webhook.core.cachedisk import CachedImage, CachedLayer
from webhook.core.layer_chain import chain_ids
from webhook.snapshotter.core.layer_parents import disk_layer_of, layer_parents

DIFFS = ["sha256:" + hashlib.sha256(f"layer {n}".encode()).hexdigest() for n in range(3)]


def image(diffs: list[str], chains: list[str], platform: str = "linux/amd64") -> CachedImage:
    layers = tuple(CachedLayer("sha256:" + "0" * 64, d, c, 1, True, platform)
                   for d, c in zip(diffs, chains, strict=True))
    return CachedImage("r/i:1", "sha256:" + "1" * 64, 1, "", layers)


def hexes(chains: list[str] | tuple[str, ...]) -> list[str]:
    return [c.removeprefix("sha256:") for c in chains]


def test_each_layer_sits_on_the_one_below_per_platform() -> None:
    chains = list(chain_ids(DIFFS))
    arm_diffs = ["sha256:" + hashlib.sha256(f"arm {n}".encode()).hexdigest() for n in range(2)]
    arm = list(chain_ids(arm_diffs))  # another platform's layers, listed after amd64's
    amd64 = image(DIFFS, chains)
    both = CachedImage("r/i:1", "sha256:" + "1" * 64, 1, "",
                       amd64.layers + image(arm_diffs, arm, "linux/arm64").layers)
    c, a = hexes(chains), hexes(arm)
    assert layer_parents([both]) == {c[0]: "", c[1]: c[0], c[2]: c[1], a[0]: "", a[1]: a[0]}


def test_a_disk_that_lies_about_the_order_is_not_believed() -> None:
    chains = list(chain_ids(DIFFS))
    swapped = image([DIFFS[0], DIFFS[2], DIFFS[1]], [chains[0], chains[2], chains[1]])
    assert layer_parents([swapped]) == {hexes(chains)[0]: ""}


def test_only_a_bare_chain_id_names_a_disk_backed_record() -> None:
    chain = chain_ids(DIFFS)[1]
    assert disk_layer_of(chain) == chain.removeprefix("sha256:")
    assert disk_layer_of(f"k8s.io/12/{chain}") == ""  # containerd's name of its own
    assert disk_layer_of("sha256:" + "A" * 64) == ""
    assert disk_layer_of("sha512:" + "a" * 128) == ""
