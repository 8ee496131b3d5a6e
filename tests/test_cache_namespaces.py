"""Where a cache may be used from (issue 10.4): one function, for the webhook and controller."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.core.cache_namespaces import refused_pull_secret, usable_namespaces
from webhook.core.caches import cache_view


@pytest.mark.parametrize(
    ("spec", "usable"),
    [
        ({}, None),
        ({"namespaces": ["a", "b"]}, {"a", "b"}),
        ({"imagePullSecrets": ["team/cred"]}, {"team"}),
        ({"imagePullSecrets": ["team/cred", "ops/cred"], "namespaces": ["team"]}, {"team"}),
        # Naming another namespace never widens the secrets' namespaces.
        ({"imagePullSecrets": ["team/cred"], "namespaces": ["team", "kube-system"]}, {"team"}),
        ({"imagePullSecrets": ["team/cred"], "namespaces": ["other"]}, set()),
    ],
)
def test_usable_namespaces(spec: dict[str, Any], usable: set[str] | None) -> None:
    assert usable_namespaces(spec) == (None if usable is None else frozenset(usable))
    view = cache_view({"metadata": {"name": "c"}, "spec": {"images": ["nginx"], **spec}})
    assert view.namespaces == usable_namespaces(spec)


def test_a_borrowed_secret_does_not_open_the_cache_to_the_borrower() -> None:
    """The attack of issue 10.4: kube-system's secret, the attacker's namespace listed."""
    spec = {"images": ["nginx"], "imagePullSecrets": ["kube-system/regcred"],
            "namespaces": ["mallory"]}  # fmt: skip
    assert not cache_view({"metadata": {"name": "c"}, "spec": spec}).usable_from("mallory")


@pytest.mark.parametrize(
    ("allowed", "refused"),
    [((), (1, "a/x")), (("a",), None), (("*",), None), (("b",), (1, "a/x"))],
)
def test_refused_pull_secret(
    allowed: tuple[str, ...], refused: tuple[int, str] | None
) -> None:
    spec = {"imagePullSecrets": ["own/s", "a/x"]}
    assert refused_pull_secret(spec, allowed, "own") == refused
