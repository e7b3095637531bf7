"""`r1lab twin up | down | status`: the local twin from the command line.

    r1lab twin up [--state-dir DIR] [--network global-networking] [--link-mbit N] [--pods bare|host]
    r1lab twin status [--json]
    r1lab twin down

`up` prints the two settings that point r1lab's RunPod client at the twin (`eval "$(r1lab twin up --env)"`
exports them); notebooks find a running twin by its state dir (`Twin.find()`), or start one (`Twin.up()`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from r1lab.cloud.twin.api import Twin, TwinError, default_state_dir
from r1lab.cloud.twin.network import LINK_MBIT


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="r1lab twin", description="The local twin: RunPod-in-a-box.")
    ap.add_argument("--state-dir", default=None, help=f"default: $R1LAB_TWIN_DIR or {default_state_dir()}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the twin (emulator + namespace pods), or report the running one")
    up.add_argument("--network", default="global-networking", choices=sorted(LINK_MBIT))
    up.add_argument("--link-mbit", type=float, default=None, help="override the modelled inter-pod rate")
    up.add_argument("--env", action="store_true", help="print only `export` lines (for eval)")
    up.add_argument(
        "--pods",
        choices=["host", "bare"],
        default=None,
        help="bare: pods with their own root filesystem, as on RunPod; host: pods sharing this machine's files "
        "(default: $R1LAB_TWIN_PODS, else bare)",
    )
    st = sub.add_parser("status", help="what runs, and what is left on the machine")
    st.add_argument("--json", action="store_true")
    sub.add_parser("down", help="terminate every pod and remove the twin's network; prove nothing is left")
    args = ap.parse_args(argv)
    twin = Twin(Path(args.state_dir) if args.state_dir else default_state_dir())
    try:
        if args.cmd == "up":
            twin = Twin.up(twin.state_dir, args.network, link_mbit=args.link_mbit, pods=args.pods)
            env = twin.client_env()
            if args.env:
                print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
                return 0
            s = twin.status()
            print(f"twin up: {s['url']} (instance {s['instance']}, pods on {s['subnet']}, host {s['host_ip']}, "
                  f"inter-pod link {s['link_mbit'] or 'unshaped'} Mbit/s)")  # fmt: skip
            print(f"state dir: {twin.state_dir}")
            print('point r1lab\'s RunPod client at it:  eval "$(r1lab twin up --env)"')
            return 0
        if args.cmd == "status":
            s = twin.status()
            s["leftovers"] = {k: v for k, v in twin.leftovers().items() if v} if not s["running"] else {}
            if args.json:
                print(json.dumps(s, indent=1))
            else:
                state = "up" if s["running"] else "down"
                print(f"twin {state}: {s['url'] if s['running'] else '-'} (state dir {s['state_dir']})")
                if s["running"]:
                    print(f"  instance {s['instance']}, subnet {s['subnet']}, link {s['link_mbit']} Mbit/s")
                    print(f"  pods: {', '.join(s['pods']) or 'none'}")
                for kind, items in s["leftovers"].items():
                    print(f"  LEFT BEHIND {kind}: {items}")
            return 0 if s["running"] or not s["leftovers"] else 1
        if args.cmd == "down":
            if not twin.info:
                print(f"no twin in {twin.state_dir}: nothing to do")
                return 0
            twin.down()
            print("twin down: no namespace, link, route, iptables rule, mount or process of it is left")
            return 0
    except TwinError as exc:
        print(f"r1lab twin {args.cmd}: {exc}", file=sys.stderr)
        return 2
    return 1
