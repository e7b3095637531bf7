"""Bare twin pods: base image build (or cache hit), pod start, and the params' setup lines run over SSH, timed.

    python benchmarks/twin_bare_setup.py [--params params/twin.yaml] [--role head] [--pods 1]

Prints, as JSON, measured on this machine (the twin; no GPU): the base image's build record (its first build's
duration), the sources' fill record, seconds to a pod answering SSH (r1lab's real start script), and seconds for
the role's setup lines as the twin runs them (GPU-only requirements taken out, see setup/<role>.json in a run),
for `--pods` pods set up in parallel. Needs root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r1lab.cloud.pods import start_command, start_script
from r1lab.cloud.twin import baseimage, sources
from r1lab.cloud.twin.netns import PodHosts
from r1lab.cloud.twin.network import TwinNet, new_instance_id
from r1lab.cloud.twin.setuplines import plan_line
from r1lab.config import load_experiment


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/twin.yaml")
    ap.add_argument("--role", default="head")
    ap.add_argument("--pods", type=int, default=1)
    a = ap.parse_args()
    exp = load_experiment(a.params)
    group = next(p for p in exp.pods if p.role == a.role)
    lines = [plan_line(c, exp.serving.engine).ran for c in group.setup]
    out: dict = {"params": a.params, "role": a.role, "image": group.image, "setup_as_run": lines}
    t0 = time.monotonic()
    baseimage.ensure(group.image)
    out["base_image"] = baseimage.build_info(group.image) | {"ensure_s_now": round(time.monotonic() - t0, 1)}
    d = sources.ensure()
    out["sources_fill"] = {
        k: v for k, v in json.loads((d / "fill.json").read_text()).items() if k.endswith("_s")
    }
    tmp = Path(tempfile.mkdtemp(prefix="r1lab-bench-bare-"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "key")], check=True)
    key = (tmp / "key.pub").read_text().strip()
    inst = new_instance_id()
    net = TwinNet.create(inst, link_mbit=None)
    srcs = sources.Sources(d, net.host_ip).start()
    hosts = PodHosts(tmp / "state", net, pods="bare", sources=srcs.pod_config())
    try:

        def one(i: int) -> dict:
            pod = {"id": f"bench{inst}{i}", "image": group.image, "args": start_command(start_script(key)),
                   "ports": ["22/tcp"], "gpu": {"id": group.gpu_type, "count": group.gpu_count}}  # fmt: skip
            t = time.monotonic()
            h = hosts.start(pod, [key])
            up = time.monotonic() - t
            t = time.monotonic()
            script = "set -e; " + "; ".join(lines)
            r = subprocess.run(["ssh", "-i", str(tmp / "key"), "-o", "StrictHostKeyChecking=no", "-o",
                                "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{h.ip}", script],
                               capture_output=True, text=True)  # fmt: skip
            return {"pod_up_s": round(up, 1), "setup_s": round(time.monotonic() - t, 1), "rc": r.returncode,
                    "tail": (r.stdout + r.stderr)[-400:]}  # fmt: skip

        with ThreadPoolExecutor(a.pods) as pool:
            out["pods"] = list(pool.map(one, range(a.pods)))
    finally:
        hosts.close()
        srcs.stop()
        net.destroy()
    print(json.dumps(out, indent=1))
    return 0 if all(p["rc"] == 0 for p in out["pods"]) else 1


if __name__ == "__main__":
    sys.exit(main())
