"""The names a serving certificate is valid for: DNS names and IP addresses (SANs).

Clients (the apiserver included) match only subjectAltName, never the CN, so every name a
client dials must be here: `svc`, `svc.ns`, `svc.ns.svc` for a Service, `IP:127.0.0.1` for
a webhook registered by URL on the loopback address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 1123 labels; a leading "*." wildcard is allowed (one label, left-most only).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DNS_MAX = 253


@dataclass(frozen=True, slots=True)
class Sans:
    dns: tuple[str, ...]
    ips: tuple[IPAddress, ...]

    def describe(self) -> str:
        """`DNS:a, IP:127.0.0.1`, the way openssl prints them."""
        return ", ".join([f"DNS:{d}" for d in self.dns] + [f"IP:{ip}" for ip in self.ips])


def _check_dns(name: str) -> str:
    text = name.strip().lower().rstrip(".")
    if not text:
        raise ValueError("--dns: an empty name was given")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        raise ValueError(f"--dns {name!r} is an IP address: pass it with --ip instead")
    if len(text) > _DNS_MAX:
        raise ValueError(f"--dns {name!r} is longer than {_DNS_MAX} characters")
    labels = text.split(".")
    if labels[0] == "*":
        if len(labels) < 3:
            raise ValueError(
                f"--dns {name!r}: a wildcard needs at least two labels after '*.' (*.ns.svc)"
            )
        labels = labels[1:]
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(
                f"--dns {name!r}: label {label!r} must be 1-63 of a-z, 0-9 and '-', "
                "not starting or ending with '-'"
            )
    return text


def _check_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(
            f"--ip {text!r} is not an IPv4 or IPv6 address (e.g. 127.0.0.1 or ::1)"
        ) from None


def parse_sans(dns: Iterable[str], ips: Iterable[str]) -> Sans:
    """Check and normalize the names; ValueError names the bad one. Duplicates are dropped."""
    dns_names = tuple(dict.fromkeys(_check_dns(n) for n in dns))
    addresses = tuple(dict.fromkeys(_check_ip(i) for i in ips))
    if not dns_names and not addresses:
        raise ValueError(
            "a serving certificate needs at least one name: pass --dns NAME and/or --ip ADDRESS"
        )
    return Sans(dns_names, addresses)
