"""The builder's termination message: what it pulled, or why it failed, in <= 4096 bytes.

Kubernetes keeps at most 4096 bytes of a container's termination message, so the encoding
degrades in deliberate steps when the full form does not fit, and says which step it took
in `note`:

  level 0  {"v":1,"n":2,"total":T,"images":[[ref,digest,size],...]}
  level 1  sizes dropped:      "images":[[ref,digest],...]
  level 2  references dropped: "digests":["a<base64url sha256>",...] in --image order
           (the controller knows what it asked for; pass it to decode to get them back)
  level 3  as many digests as fit, the rest counted in "omitted"

A failure is {"error":{"reason":R,"message":M}}, the message cut (and marked) to fit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webhook.core.jsondoc import json_object
from webhook.core.ocilayout import InvalidDigest, split_digest

LIMIT = 4096
VERSION = 1
_ALG_CODE = {"sha256": "a", "sha512": "b"}
_CODE_ALG = {v: k for k, v in _ALG_CODE.items()}
_TRUNCATED = "... (truncated)"


@dataclass(frozen=True, slots=True)
class ResultImage:
    image: str | None  # normalized reference; None when level 2+ dropped it
    digest: str | None  # None when level 3 omitted it
    size: int | None  # None when level 1+ dropped it


@dataclass(frozen=True, slots=True)
class BuildResult:
    images: tuple[ResultImage, ...]
    total_bytes: int
    note: str = ""  # empty at level 0, else what was dropped


@dataclass(frozen=True, slots=True)
class BuildError:
    reason: str
    message: str


class InvalidBuildResult(ValueError):
    pass


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _fits(text: str) -> bool:
    return len(text.encode()) <= LIMIT


def compact_digest(digest: str) -> str:
    algorithm, encoded = split_digest(digest)
    raw = bytes.fromhex(encoded)
    return _ALG_CODE[algorithm] + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def expand_digest(compact: str) -> str:
    algorithm = _CODE_ALG.get(compact[:1])
    if algorithm is None:
        raise InvalidBuildResult(f"compact digest {compact!r} has an unknown algorithm code")
    body = compact[1:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise InvalidBuildResult(f"compact digest {compact!r} is not base64url") from None
    digest = f"{algorithm}:{raw.hex()}"
    try:
        split_digest(digest)
    except InvalidDigest as exc:
        raise InvalidBuildResult(str(exc)) from None
    return digest


def encode_build_result(images: Sequence[tuple[str, str, int]], total_bytes: int) -> str:
    """(normalized reference, digest, size) per --image argument, in argument order."""
    head: dict[str, Any] = {"v": VERSION, "n": len(images), "total": total_bytes}
    full = _dump({**head, "images": [[i, d, s] for i, d, s in images]})
    if _fits(full):
        return full
    no_sizes = _dump(
        {**head, "images": [[i, d] for i, d, _ in images],
         "note": f"sizes dropped to fit {LIMIT} bytes"}
    )
    if _fits(no_sizes):
        return no_sizes
    digests = [compact_digest(d) for _, d, _ in images]
    positional = {**head, "digests": digests,
                  "note": f"references and sizes dropped to fit {LIMIT} bytes; digests are "
                          "in --image order"}
    text = _dump(positional)
    if _fits(text):
        return text
    # Keep the longest prefix that fits; the count of the rest tells the reader it is partial.
    low, high = 0, len(digests)
    while low < high:
        mid = (low + high + 1) // 2
        candidate = _dump({**positional, "digests": digests[:mid], "omitted": len(digests) - mid,
                           "note": f"only the first {mid} of {len(digests)} digests fit in "
                                   f"{LIMIT} bytes; read imagecache.json for the rest"})
        if _fits(candidate):
            low = mid
        else:
            high = mid - 1
    return _dump({**positional, "digests": digests[:low], "omitted": len(digests) - low,
                  "note": f"only the first {low} of {len(digests)} digests fit in {LIMIT} "
                          "bytes; read imagecache.json for the rest"})


def encode_build_error(reason: str, message: str) -> str:
    text = _dump({"error": {"reason": reason, "message": message}})
    if _fits(text):
        return text
    low, high = 0, len(message)
    while low < high:
        mid = (low + high + 1) // 2
        if _fits(_dump({"error": {"reason": reason, "message": message[:mid] + _TRUNCATED}})):
            low = mid
        else:
            high = mid - 1
    return _dump({"error": {"reason": reason, "message": message[:low] + _TRUNCATED}})


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidBuildResult(f"build result field {key!r} must be a non-negative integer")
    return value


def decode_build_result(
    text: str | bytes, requested: Sequence[str] | None = None
) -> BuildResult | BuildError:
    """Read a termination message. `requested` (the --image arguments, normalized or as
    written) fills in references the encoding dropped."""
    doc = json_object(text, "build result", InvalidBuildResult)
    error = doc.get("error")
    if isinstance(error, dict):
        return BuildError(str(error.get("reason", "")), str(error.get("message", "")))
    if doc.get("v") != VERSION:
        raise InvalidBuildResult(f"build result version {doc.get('v')!r} is not {VERSION}")
    count, total = _int(doc, "n"), _int(doc, "total")
    note = str(doc.get("note", ""))
    images: list[ResultImage] = []
    if "images" in doc:
        rows = doc["images"]
        if not isinstance(rows, list):
            raise InvalidBuildResult("build result 'images' must be a list")
        for n, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) in (2, 3)
                    and all(isinstance(x, str) for x in row[:2])):
                raise InvalidBuildResult(f"build result images[{n}] must be [ref, digest, size?]")
            size = row[2] if len(row) == 3 else None
            if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
                raise InvalidBuildResult(f"build result images[{n}] size must be an integer")
            images.append(ResultImage(row[0], row[1], size))
    elif "digests" in doc:
        compact = doc["digests"]
        if not isinstance(compact, list) or not all(isinstance(c, str) for c in compact):
            raise InvalidBuildResult("build result 'digests' must be a list of strings")
        omitted = _int(doc, "omitted") if "omitted" in doc else 0
        if len(compact) + omitted != count:
            raise InvalidBuildResult(
                f"build result lists {len(compact)} digests and omits {omitted}, not n={count}"
            )
        digests: list[str | None] = [expand_digest(c) for c in compact]
        digests += [None] * omitted
        if requested is not None and len(requested) != count:
            raise InvalidBuildResult(
                f"build result holds {count} images but {len(requested)} were requested"
            )
        images = [ResultImage(requested[n] if requested is not None else None, d, None)
                  for n, d in enumerate(digests)]
    else:
        raise InvalidBuildResult("build result has neither 'images' nor 'digests'")
    if len(images) != count:
        raise InvalidBuildResult(f"build result lists {len(images)} images, not n={count}")
    return BuildResult(tuple(images), total, note)
