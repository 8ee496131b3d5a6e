"""webhook.core.watch_plan: watch lines -> steps, LIST resourceVersion, backoff schedule."""

from __future__ import annotations

import json

import pytest

from webhook.core.watch_plan import (
    Apply,
    Bookmark,
    Reconnect,
    Relist,
    Step,
    backoff_delay,
    interpret,
    list_resource_version,
)

CACHE = {"kind": "ImageCache", "metadata": {"name": "web", "resourceVersion": "42"}}
NO_RV = {"kind": "ImageCache", "metadata": {"name": "web"}}


def _line(event: object) -> bytes:
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (_line({"type": "ADDED", "object": CACHE}), Apply("ADDED", CACHE, "42")),
        (_line({"type": "MODIFIED", "object": CACHE}), Apply("MODIFIED", CACHE, "42")),
        (_line({"type": "DELETED", "object": CACHE}), Apply("DELETED", CACHE, "42")),
        (_line({"type": "ADDED", "object": NO_RV}), Apply("ADDED", NO_RV, None)),
        (
            _line({"type": "BOOKMARK", "object": {"kind": "ImageCache",
                                                  "metadata": {"resourceVersion": "99"}}}),
            Bookmark("99"),
        ),
        (
            _line({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                               "message": "too old resource version: 1 (96)"}}),
            Relist("watch expired: 410 Expired too old resource version: 1 (96)"),
        ),
        (
            _line({"type": "ERROR", "object": {"kind": "Status", "reason": "Gone"}}),
            Relist("watch expired: Gone"),
        ),
        (
            _line({"kind": "Status", "code": 410, "reason": "Expired", "message": "gone"}),
            Relist("watch expired: 410 Expired gone"),
        ),
        (
            _line({"type": "ERROR", "object": {"kind": "Status", "code": 500,
                                               "message": "etcd timeout"}}),
            Reconnect("watch error: 500 etcd timeout"),
        ),
        (_line({"type": "ERROR", "object": {}}), Reconnect("watch error: no details")),
        (_line({"type": "BOOKMARK", "object": {}}),
         Reconnect("BOOKMARK event without metadata.resourceVersion")),
        (_line({"type": "ADDED"}), Reconnect("watch event 'ADDED' has no object")),
        (_line({"type": "SYNC", "object": CACHE}), Reconnect("unknown watch event type 'SYNC'")),
        (_line([1, 2]), Reconnect("watch line is not a JSON object")),
        (b'{"type": "ADDED", "obj',
         Reconnect("""unreadable watch line: '{"type": "ADDED", "obj'""")),
    ],
    ids=[
        "added", "modified", "deleted", "added-without-rv", "bookmark", "error-410",
        "error-gone-reason", "bare-status-410", "error-500", "error-empty", "bookmark-without-rv",
        "no-object", "unknown-type", "not-an-object", "truncated",
    ],
)  # fmt: skip
def test_interpret(line: bytes, expected: Step) -> None:
    assert interpret(line) == expected


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ({"items": [], "metadata": {"resourceVersion": "7"}}, "7"),
        ({"items": [CACHE], "metadata": {"resourceVersion": "1234", "continue": ""}}, "1234"),
    ],
)
def test_list_resource_version(listing: object, expected: str) -> None:
    assert list_resource_version(listing) == expected


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ({"items": [], "metadata": {}}, "no metadata.resourceVersion"),
        ({"items": [], "metadata": {"resourceVersion": ""}}, "no metadata.resourceVersion"),
        ({"metadata": {"resourceVersion": "1"}}, "not a list object"),
        ([], "not a list object"),
    ],
)
def test_list_resource_version_errors(listing: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list_resource_version(listing)


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (0, 0.0, 0.25),  # half of base 0.5 is fixed
        (0, 0.999999, 0.5),
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (3, 0.0, 2.0),
        (5, 0.0, 8.0),
        (6, 0.0, 15.0),  # 32 s capped at 30
        (6, 0.5, 22.5),
        (100, 0.0, 15.0),
        (10_000, 0.999999, 30.0),
    ],
)
def test_backoff_delay(attempt: int, jitter: float, expected: float) -> None:
    assert backoff_delay(attempt, jitter=jitter) == pytest.approx(expected, abs=1e-4)


def test_backoff_delay_custom_base_and_cap() -> None:
    assert [backoff_delay(n, jitter=0.0, base=0.1, cap=1.0) for n in range(6)] == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    )


@pytest.mark.parametrize(("attempt", "jitter"), [(-1, 0.0), (0, 1.0), (0, -0.1)])
def test_backoff_delay_rejects_bad_input(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, jitter=jitter)
