"""The chart on a real node, installed as README's install section says (local image, values
only where the node differs): every part Ready, `helm test` passes, `helm upgrade` keeps it
working. (The files of this directory run in order: 1 chart, 2 cache, 3 faults, 4 snapshotter,
5 uninstall.)"""

from __future__ import annotations

from pathlib import Path

from node_harness import MIRROR_PORT, eventually
from node_site import NAMESPACE, RELEASE, Site, install, wait_release_ready


def test_every_part_is_ready(site: Site) -> None:
    node = site.node
    webhook = node.get("deployment", f"{RELEASE}-webhook", NAMESPACE) or {}
    assert (webhook.get("status") or {}).get("readyReplicas") == 2
    controller = node.get("deployment", f"{RELEASE}-controller", NAMESPACE) or {}
    assert (controller.get("status") or {}).get("readyReplicas") == 1
    mirror = node.get("daemonset", f"{RELEASE}-mirror", NAMESPACE) or {}
    assert (mirror.get("status") or {}).get("numberReady") == 1
    # the mirror's init container wrote containerd's hosts.toml for each registry
    for registry in (site.public, site.private):
        hosts = (node.dir / "certs.d" / registry.host / "hosts.toml").read_text()
        assert f'[host."http://127.0.0.1:{node.base + MIRROR_PORT}"]' in hosts


def test_helm_test_passes(site: Site) -> None:
    done = site.node.helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "180s")
    assert "Phase:          Succeeded" in done.stdout or "Succeeded" in done.stdout, done.stdout


def test_helm_upgrade_keeps_it_working(site: Site, tmp_path: Path) -> None:
    node = site.node
    before = node.get("mutatingwebhookconfiguration", RELEASE) or {}
    bundle = before["webhooks"][0]["clientConfig"]["caBundle"]
    values = {**site.values, "logLevel": "debug"}
    install(node, values, tmp_path, upgrade=True)
    wait_release_ready(node)
    after = node.get("mutatingwebhookconfiguration", RELEASE) or {}
    # the caBundle the controller injected survives the upgrade (no window without it)
    assert after["webhooks"][0]["clientConfig"]["caBundle"] == bundle
    # and the webhook still decides: a server-side dry run gets a decision
    pod = _dry_run_decision(site, "upgrade-check")
    assert pod in ("miss", "unavailable", "hit", "mismatch"), pod
    done = node.helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "180s")
    assert "Succeeded" in done.stdout
    # back to the session's values
    install(node, site.values, tmp_path, upgrade=True)
    wait_release_ready(node)
    eventually(
        "the webhook to answer after the upgrade",
        lambda: _dry_run_decision(site, "upgrade-check2") or None,
        60,
    )


def _dry_run_decision(site: Site, name: str) -> str:
    """The decision the webhook writes on a server-side dry run of an opted-in pod."""
    return site.node.kubectl(
        "run",
        name,
        "--image",
        f"{site.public.host}/none:1",
        "--dry-run=server",
        "-o",
        "jsonpath={.metadata.annotations.imagecache\\.dev/decision}",
        "--annotations",
        "imagecache.dev/use-image-cache=auto",
    ).stdout
