"""Measure the twin's links: pod -> pod (shaped to the modelled network) and host -> pod (unshaped).

    sudo .venv/bin/python benchmarks/twin_link.py [--network global-networking] [--mbytes 6]

Two bare namespace pods on a fresh bridge (no sshd needed), plain TCP between them; prints Mbit/s and the
ratio to the modelled rate, plus the TCP connect round trip. Needs root; leaves nothing behind.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from r1lab.cloud.twin.network import LINK_MBIT, TwinNet, leftovers, new_instance_id

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(8); print("ready", flush=True)
while True:
    c, _ = s.accept()
    if c.recv(1) == b"q": break
    n = 0
    while True:
        d = c.recv(1 << 16)
        if not d: break
        n += len(d)
    c.sendall(b"ok"); c.close()
"""
CLIENT = """
import socket, sys, time
ip, nbytes = sys.argv[1], int(sys.argv[2])
t = time.perf_counter(); c = socket.create_connection((ip, 5201)); rtt = time.perf_counter() - t
c.sendall(b"d"); buf = b"x" * 65536; left = nbytes; t = time.perf_counter()
while left > 0:
    c.sendall(buf[: min(left, 65536)]); left -= 65536
c.shutdown(socket.SHUT_WR); c.recv(2)
print(nbytes * 8 / (time.perf_counter() - t) / 1e6, rtt * 1e3)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--network", default="global-networking", choices=sorted(LINK_MBIT))
    ap.add_argument("--mbytes", type=float, default=6.0)
    args = ap.parse_args()
    rate = LINK_MBIT[args.network]
    inst = new_instance_id()
    net = TwinNet.create(inst, rate)
    srv = None
    try:
        ns_a, ip_a = net.add_pod(1)
        ns_b, _ = net.add_pod(2)
        srv = subprocess.Popen(["ip", "netns", "exec", ns_a, sys.executable, "-c", SERVER, ip_a],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        n = int(args.mbytes * 1e6)
        for label, prefix, nbytes in (
            ("pod -> pod ", ["ip", "netns", "exec", ns_b], n),
            ("host -> pod", [], n * 10),
        ):
            t0 = time.perf_counter()
            out = subprocess.run([*prefix, sys.executable, "-c", CLIENT, ip_a, str(nbytes)],
                                 capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
            mbit, rtt_ms = float(out[0]), float(out[1])
            ratio = f" = {mbit / rate:.2f} x modelled {rate:g} Mbit/s" if rate and "pod ->" in label else ""
            print(f"{label}: {mbit:8.1f} Mbit/s{ratio}  (connect {rtt_ms:.2f} ms, {nbytes / 1e6:.0f} MB in "
                  f"{time.perf_counter() - t0:.1f} s)")  # fmt: skip
        subprocess.run(["ip", "netns", "exec", ns_b, sys.executable, "-c",
                        f"import socket; socket.create_connection(('{ip_a}', 5201)).sendall(b'q')"], check=True)  # fmt: skip
        srv.wait(timeout=10)
    finally:
        if srv is not None and srv.poll() is None:
            srv.kill()
        net.destroy()
    left = {k: v for k, v in leftovers(inst, str(net.subnet)).items() if v}
    print("left behind:", left or "nothing")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
