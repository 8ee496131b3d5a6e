"""Why a build failed, and the exit code each reason maps to (docs/builder.md has the table).

The controller tells failures apart by the reason in the termination message; the exit code
says the same thing to anyone reading `kubectl get pod` or a shell.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    INVALID_ARGUMENT = "InvalidArgument"
    IMAGE_NOT_FOUND = "ImageNotFound"
    UNAUTHORIZED = "Unauthorized"
    DISK_FULL = "DiskFull"
    DIGEST_MISMATCH = "DigestMismatch"
    REGISTRY_UNREACHABLE = "RegistryUnreachable"
    REGISTRY_ERROR = "RegistryError"
    INTERNAL = "Internal"


EXIT_CODES: dict[Reason, int] = {
    Reason.INTERNAL: 1,
    Reason.INVALID_ARGUMENT: 2,  # the same code argparse uses for a bad command line
    Reason.IMAGE_NOT_FOUND: 10,
    Reason.UNAUTHORIZED: 11,
    Reason.DISK_FULL: 12,
    Reason.DIGEST_MISMATCH: 13,
    Reason.REGISTRY_UNREACHABLE: 14,
    Reason.REGISTRY_ERROR: 15,
}


class BuildFailure(Exception):
    """A failure with a reason the controller can act on and a message a person can act on."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]


def format_bytes(n: int) -> str:
    """Bytes for people: 1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
