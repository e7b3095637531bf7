"""How long verification takes: sha256 throughput of the pod script's hashing, and what that means for
DeepSeek-R1's 688.6 GB (a pod's network-volume read speed caps it further). Also the end-to-end rate of one
download through huggingface_hub from the fake Hub on loopback (the fake, not the Hub, sets that ceiling).

    .venv/bin/python benchmarks/hub_verify.py [--mb 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r1lab.hub import LocalExec, download_to_volume
from r1lab.hub.fake import FakeHub
from r1lab.hub.podscript import hashes

R1_BYTES = 688_595_456_000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="size of each test file")
    args = ap.parse_args()
    n = args.mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="r1lab-hubbench-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        for i in (1, 2):
            with open(root / f"model-0000{i}-of-000002.safetensors", "wb") as f:
                for _ in range(args.mb):
                    f.write(os.urandom(1_000_000))
        files = sorted(root.glob("*.safetensors"))
        hashes(str(files[0]), False)  # warm the page cache
        t = time.perf_counter()
        hashes(str(files[0]), False)
        one = n / (time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: hashes(str(p), False), files))
        two = 2 * n / (time.perf_counter() - t)
        print(f"sha256, 1 thread : {one / 1e6:8.0f} MB/s  -> R1 688.6 GB in {R1_BYTES / one / 60:6.1f} min")
        print(f"sha256, 2 threads: {two / 1e6:8.0f} MB/s  -> R1 688.6 GB in {R1_BYTES / two / 60:6.1f} min")
        print(f"(cpus here: {os.cpu_count()}; on a pod the volume's read rate bounds this too)")
        with FakeHub({"bench/repo": root}) as hub:
            t = time.perf_counter()
            download_to_volume(
                LocalExec(),
                "bench/repo",
                "main",
                str(Path(tmp) / "vol"),
                ["*.safetensors"],
                endpoint=hub.url,
                python=sys.executable,
                install_missing=False,
                max_workers=2,
                show=lambda _msg: None,
            )
            dt = time.perf_counter() - t
        print(
            f"download+verify via fake hub (loopback): {2 * n / dt / 1e6:6.0f} MB/s for {2 * n / 1e6:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
