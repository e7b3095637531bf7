"""`python -m r1lab.cloud.emulator --port 0 --state-dir DIR [--backend record|local-sshd|module:Class] [--rate-limit ..]`

Serves the emulator until SIGTERM/SIGINT and prints its URL on the first line of stdout. The API key it
accepts is RUNPOD_API_KEY from the environment (or --key-file); it is never printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from r1lab.cloud.emulator.backends import make_backend
from r1lab.cloud.emulator.ratelimit import DEFAULT_POLICY
from r1lab.cloud.emulator.server import Emulator, Timings


def parse_rate_limits(text: str | None) -> tuple[tuple[str, int, int], ...]:
    """'minute=600/60,hour=30000/3600' -> (("minute", 600, 60), ...); None -> the default; 'off' -> ()."""
    if text is None:
        return DEFAULT_POLICY
    if text.strip().lower() == "off":
        return ()
    out = []
    for part in text.split(","):
        name, _, rest = part.strip().partition("=")
        quota, _, seconds = rest.partition("/")
        if not (
            name.isidentifier() and quota.isdigit() and seconds.isdigit() and int(quota) and int(seconds)
        ):
            raise ValueError(
                f"--rate-limit {part.strip()!r}: write NAME=QUOTA/SECONDS, e.g. minute=600/60, or off"
            )
        out.append((name, int(quota), int(seconds)))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m r1lab.cloud.emulator", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--backend", default="record", help="record | local-sshd | package.module:Class")
    ap.add_argument("--key-file", type=Path, default=None, help="file holding the accepted API key")
    ap.add_argument("--provision-s", type=float, default=Timings.provision_s)
    ap.add_argument("--start-s", type=float, default=Timings.start_s)
    ap.add_argument("--ports-delay-s", type=float, default=Timings.ports_delay_s)
    ap.add_argument("--stock", type=int, default=16, help="free GPUs per GPU type and data center")
    ap.add_argument(
        "--rate-limit",
        default=None,
        help="request quotas per API key, NAME=QUOTA/SECONDS[,...] (default minute=600/60,hour=30000/3600,"
        "day=500000/86400), or 'off'",
    )
    args = ap.parse_args(argv)
    try:
        rate_limits = parse_rate_limits(args.rate_limit)
    except ValueError as exc:
        ap.error(str(exc))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the emulator listens on loopback only")
    key = args.key_file.read_text().strip() if args.key_file else os.environ.get("RUNPOD_API_KEY", "").strip()
    if not key:
        ap.error("no API key: set RUNPOD_API_KEY (the key clients must send) or pass --key-file")
    backend_dir = args.state_dir / "pods" if args.state_dir else None
    emu = Emulator(
        api_key=key,
        backend=make_backend(args.backend, backend_dir),
        timings=Timings(args.provision_s, args.start_s, args.ports_delay_s),
        state_dir=args.state_dir,
        host=args.host,
        port=args.port,
        stock=args.stock,
        rate_limits=rate_limits,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    emu.start()
    if args.state_dir:
        (args.state_dir / "emulator.pid").write_text(f"{os.getpid()}\n")
    print(emu.url, flush=True)
    try:
        done.wait()
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
