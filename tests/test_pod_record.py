"""The slim record the controller keeps of a decided pod (issue 10.8)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from webhook.controller.core import reconcile_model as m
from webhook.controller.core import reconcile_pods as rp
from webhook.controller.core.pod_record import slim_pod

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "uid": "u-1",
        "resourceVersion": "42",
        "creationTimestamp": "2026-12-01T10:00:00Z",
        "labels": {"app": "web", "imagecache.dev/cache": "web", "imagecache.dev/decision": "hit"},
        "annotations": {
            "imagecache.dev/decision": "mismatch",
            "imagecache.dev/cache": "web",
            "imagecache.dev/missing-images": "docker.io/library/redis:7",
            "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 5000 + "}",
        },
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f", "uid": "r"}],
    },
    "spec": {
        "containers": [{"name": "web", "image": "nginx", "env": [{"name": "A"}] * 20}],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {
                "name": "imagecache",
                "ephemeral": {
                    "volumeClaimTemplate": {
                        "metadata": {"labels": {"imagecache.dev/cache": "web"}},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "dataSource": {
                                "apiGroup": "snapshot.storage.k8s.io",
                                "kind": "VolumeSnapshot",
                                "name": "imagecache-web-1a2b",
                            },
                        },
                    }
                },
            },
        ],
    },
    "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled"}]},
}


def test_a_slim_record_keeps_what_the_controller_reads_and_nothing_else() -> None:
    slim = slim_pod(POD)
    assert slim == {
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "uid": "u-1",
            "resourceVersion": "42",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"imagecache.dev/cache": "web", "imagecache.dev/decision": "hit"},
            "annotations": {
                "imagecache.dev/decision": "mismatch",
                "imagecache.dev/cache": "web",
                "imagecache.dev/missing-images": "docker.io/library/redis:7",
            },
        },
        "spec": {
            "volumes": [
                {
                    "name": "imagecache",
                    "ephemeral": {
                        "volumeClaimTemplate": {
                            "spec": {
                                "dataSource": {
                                    "kind": "VolumeSnapshot",
                                    "name": "imagecache-web-1a2b",
                                }
                            }
                        }
                    },
                }
            ]
        },
        "status": {"phase": "Pending"},
    }
    assert len(json.dumps(slim)) * 10 < len(json.dumps(POD))
    # What the controller derives from a pod is the same from either.
    full, kept = m.user_pod_state(POD), m.user_pod_state(slim)
    assert kept == replace(full, annotations=slim["metadata"]["annotations"])
    assert kept.clones == "imagecache-web-1a2b"  # in use until its claim exists (10.2)
    assert rp.pod_event(kept.annotations) == rp.pod_event(full.annotations) is not None
    assert rp.latest_matches([kept]) == rp.latest_matches([full])


def test_odd_pods_give_a_record_not_an_error() -> None:
    assert slim_pod({}) == {"metadata": {}}
    odd = {"metadata": {"labels": None, "annotations": {"imagecache.dev/x": 3}}, "status": []}
    assert slim_pod(odd) == {"metadata": {}}
