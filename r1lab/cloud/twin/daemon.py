"""The twin as a long-lived process: RunPod's v2 API emulator on 127.0.0.1 with namespace pods behind it.

`python -m r1lab.cloud.twin.daemon --state-dir DIR [--network global-networking]` (started detached by
`Twin.up`): creates the bridge, serves the emulator, writes `DIR/twin.json` (url, instance, subnet, pid) once it
answers, and on SIGTERM terminates every pod and removes the bridge. It outlives notebook kernels; any process
finds it through its state dir (`Twin.find`). The API key it accepts is in `DIR/api_key` (0600): a local token
of this twin, never a RunPod key.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from r1lab.cloud.emulator.server import Emulator, Timings
from r1lab.cloud.twin.netns import POD_KINDS, PodHosts, pod_kind, release_mountpoints
from r1lab.cloud.twin.network import LINK_MBIT, TwinNet, new_instance_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m r1lab.cloud.twin.daemon")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--network", default="global-networking", choices=sorted(LINK_MBIT))
    ap.add_argument("--link-mbit", type=float, default=None, help="override the modelled inter-pod rate")
    ap.add_argument("--provision-s", type=float, default=1.0)
    ap.add_argument("--start-s", type=float, default=0.5)
    ap.add_argument("--ports-delay-s", type=float, default=0.5)
    ap.add_argument(
        "--pods",
        choices=POD_KINDS,
        default=None,
        help="bare: pods with their own root filesystem, as on RunPod; host: pods sharing this machine's files "
        "(default: $R1LAB_TWIN_PODS, else bare)",
    )
    args = ap.parse_args(argv)
    args.pods = pod_kind(args.pods)
    state: Path = args.state_dir
    key = (state / "api_key").read_text().strip()
    link = args.link_mbit if args.link_mbit is not None else LINK_MBIT[args.network]
    inst = new_instance_id()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    # written first, so a twin whose daemon dies mid-start can still be cleaned from its state dir
    _write(state / "twin.json", {"instance": inst, "pid": os.getpid(), "phase": "starting"})
    net = TwinNet.create(inst, link)
    info = {
        "instance": inst,
        "pid": os.getpid(),
        "subnet": str(net.subnet),
        "host_ip": net.host_ip,
        "bridge": net.bridge,
        "network": args.network,
        "link_mbit": link,
        "phase": "starting",
    }
    _write(state / "twin.json", info)
    emu = None
    srcs = None
    try:
        pod_sources = None
        if args.pods == "bare":  # the apt repository and package index the pods' setup lines install from
            from r1lab.cloud.twin import sources

            srcs = sources.Sources(sources.ensure(), net.host_ip).start()
            pod_sources = srcs.pod_config()
            info.update(sources=pod_sources)
        info["pods"] = args.pods
        hosts = PodHosts(state, net, pods=args.pods, sources=pod_sources)
        emu = Emulator(
            api_key=key,
            backend=hosts,
            timings=Timings(args.provision_s, args.start_s, args.ports_delay_s),
            state_dir=state / "emulator",
        )
        emu.start()
        info.update(url=emu.url, phase="up", started=time.time())
        _write(state / "twin.json", info)
        print(f"twin {inst} up: {emu.url} (pods on {net.subnet}, inter-pod link {link or 'unshaped'} Mbit/s)")
        sys.stdout.flush()
        done.wait()
    finally:
        info["phase"] = "stopping"
        _write(state / "twin.json", info)
        if emu is not None:
            emu.stop()  # closes the backend: every pod terminated
        if srcs is not None:
            srcs.stop()
        net.destroy()
        release_mountpoints(inst)
        info["phase"] = "down"
        _write(state / "twin.json", info)
        print(f"twin {inst} down", flush=True)
    return 0


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
