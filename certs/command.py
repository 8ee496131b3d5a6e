"""`imagecache certs generate`: a CA (reused if present) and a serving certificate in a directory.

    imagecache certs generate --out DIR --dns NAME... --ip IP... [--days N] [--ca-days N]

writes DIR/ca.crt, DIR/ca.key, DIR/tls.crt, DIR/tls.key (keys mode 0600). Running it again
with the same DIR keeps the CA, so a client that trusts ca.crt keeps working.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from certs.files import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, CertFileError, load_ca, write_pair
from certs.issue import make_ca, make_serving, new_key
from certs.sans import parse_sans

DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagecache certs", description="Certificates for the admission webhook.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = commands.add_parser(
        "generate",
        help="write ca.crt, ca.key, tls.crt, tls.key (reuses the CA already in --out)",
        description="Write a CA (kept if DIR already holds one) and a serving certificate "
        "for the given DNS names and IP addresses.",
    )
    generate.add_argument("--out", required=True, type=Path, metavar="DIR",
                          help="directory for ca.crt, ca.key, tls.crt, tls.key (created if "
                          "missing; a CA already there is kept)")
    generate.add_argument(
        "--dns", action="extend", nargs="+", default=[], metavar="NAME",
        help="DNS name clients dial (repeatable), e.g. imagecache-webhook.imagecache.svc "
        "(default: none; give --dns or --ip)",
    )  # fmt: skip
    generate.add_argument(
        "--ip", action="extend", nargs="+", default=[], metavar="IP",
        help="IP address clients dial (repeatable), e.g. 127.0.0.1 (default: none)",
    )  # fmt: skip
    generate.add_argument(
        "--days", type=int, default=DEFAULT_DAYS,
        help="serving certificate validity in days (default: %(default)s)",
    )  # fmt: skip
    generate.add_argument(
        "--ca-days", type=int, default=DEFAULT_CA_DAYS,
        help="validity of a new CA in days (default: %(default)s; ignored when the CA is reused)",
    )  # fmt: skip
    return parser


def generate(out: Path, dns: list[str], ips: list[str], days: int, ca_days: int) -> str:
    """Do the work; returns a summary, raises ValueError/CertFileError/OSError with the fix."""
    sans = parse_sans(dns, ips)
    now = datetime.now(UTC)
    out.mkdir(parents=True, exist_ok=True)
    ca = load_ca(out, now)
    lines: list[str] = []
    if ca is None:
        ca = make_ca(now=now, days=ca_days, key=new_key())
        write_pair(out, ca, CA_CERT, CA_KEY)
        lines.append(
            f"new CA {out / CA_CERT} ({ca.cert.subject.rfc4514_string()}, "
            f"valid until {ca.cert.not_valid_after_utc:%Y-%m-%d})"
        )
    else:
        lines.append(
            f"kept the CA in {out / CA_CERT} (valid until {ca.cert.not_valid_after_utc:%Y-%m-%d})"
        )
    serving = make_serving(ca, sans, now=now, days=days, key=new_key())
    write_pair(out, serving, TLS_CERT, TLS_KEY)
    lines.append(
        f"wrote {out / TLS_CERT} and {out / TLS_KEY} for {sans.describe()} "
        f"(valid until {serving.cert.not_valid_after_utc:%Y-%m-%d})"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point; `argv` is what follows `imagecache certs`."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return exc.code if isinstance(exc.code, int) else 2
    try:
        summary = generate(args.out, args.dns, args.ip, args.days, args.ca_days)
    except (ValueError, CertFileError) as exc:
        print(f"imagecache certs: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"imagecache certs: error: cannot write{where}: {exc.strerror or exc} "
            "(check that --out is a writable directory)",
            file=sys.stderr,
        )
        return 1
    print(summary)
    return 0
