"""Kubernetes resource quantities (`20Gi`, `500M`, `1.5Gi`, `21474836480`) as bytes."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

GIB = 1024**3
_SUFFIX = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([+]?[0-9]+(?:\.[0-9]*)?|[+]?\.[0-9]+)(?:[eE]([+-]?[0-9]+))?([a-zA-Z]*)$")


class InvalidQuantity(ValueError):
    pass


def parse_bytes(text: str) -> int:
    """Bytes in a quantity, rounded up; raises InvalidQuantity with the accepted forms."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not match or match.group(3) not in _SUFFIX or (match.group(2) and match.group(3)):
        raise InvalidQuantity(
            f"{text!r} is not a quantity of bytes; write e.g. 40Gi, 500Mi or 21474836480"
        )
    try:
        number = Decimal(match.group(1))
        if match.group(2):
            number *= Decimal(10) ** int(match.group(2))
    except (InvalidOperation, ValueError):
        raise InvalidQuantity(f"{text!r} is not a number of bytes") from None
    return math.ceil(number * _SUFFIX[match.group(3)])


def format_gib(size: int) -> str:
    """`size` bytes as whole GiB, rounded up (the unit PVC sizes are written in here)."""
    return f"{math.ceil(size / GIB)}Gi"
