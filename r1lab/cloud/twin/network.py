"""The twin's network: one Linux bridge per twin instance, one veth per pod, tc shaping between pods.

Layout of an instance `<inst>` (6 hex chars, unique per twin):
- a private /24 `10.a.b.0/24` not routed on this machine, reserved atomically (O_EXCL file in `RESERVATIONS`),
  so twins of concurrent test runs never collide; the host is `.1` on bridge `r1b<inst>`;
- pod n: network namespace `r1lab-<inst>-<n>` with `eth0` (peer of host-side veth `r1v<inst><n:02x>`) at `.n+1`,
  a default route via the host (so software that finds its address by routing, as Ray does, finds the pod's),
  an OUTPUT rule in the pod that refuses everything but loopback and the twin's subnet at once, and on the host
  an iptables FORWARD rule that drops anything leaving the bridge: nothing reaches the outside;
- inter-pod shaping on each host-side veth's egress: packets from another pod go through an HTB class at the
  modelled rate (100 Mbit/s for RunPod global networking); packets from the host are not shaped.

Everything created carries the instance id in its name (or an iptables comment), so `leftovers(inst)` can list it.
"""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

RESERVATIONS = Path("/run/r1lab-twin/subnets")
# 10.213.0.0/16 .. 10.250.0.0/16: far from the usual docker/k8s/VPN defaults.
_SECOND_OCTETS = range(213, 251)
# Rates of the modelled links between pods (provider.network), in Mbit/s; None: not shaped.
LINK_MBIT: dict[str, float | None] = {
    "global-networking": 100.0,
    "instant-cluster": None,
    "infiniband": None,
    "none": 100.0,
}


class TwinNetError(RuntimeError):
    """A network step failed: carries the command and its output."""


def sh(*argv: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (optionally inside a network namespace); raise TwinNetError naming it on failure."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TwinNetError(
            f"`{' '.join(cmd)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def new_instance_id() -> str:
    return os.urandom(3).hex()


def bridge_name(inst: str) -> str:
    return f"r1b{inst}"


def netns_name(inst: str, index: int) -> str:
    return f"r1lab-{inst}-{index}"


def veth_name(inst: str, index: int) -> str:
    return f"r1v{inst}{index:02x}"


def _comment(inst: str) -> str:
    return f"r1lab-twin-{inst}"


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = sh("ip", "-4", "-o", "route", "show", "table", "all", check=False).stdout
    out += sh("ip", "-4", "-o", "addr", "show", check=False).stdout
    nets = []
    for word in out.split():
        if "/" in word or word.count(".") == 3:
            try:
                nets.append(ipaddress.IPv4Network(word, strict=False))  # `ip -4`: IPv4 only
            except ValueError:
                continue
    return nets


def reserve_subnet(inst: str) -> ipaddress.IPv4Network:
    """Pick a free 10.x.y.0/24 and reserve it for this instance (atomic across processes)."""
    RESERVATIONS.mkdir(parents=True, exist_ok=True)
    used = _used_networks()
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.choice(_SECOND_OCTETS)}.{rng.randrange(256)}.0/24")
        if any(net.overlaps(u) for u in used if u.prefixlen > 0):
            continue
        path = RESERVATIONS / f"{net.network_address}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _stale(path):
                path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(inst)
        return net
    raise TwinNetError("no free 10.x.y.0/24 for the twin after 200 tries: run `r1lab twin status --all`")


def _stale(path: Path) -> bool:
    """A reservation whose bridge never came up (or is gone) and that is older than a minute."""
    try:
        inst = path.read_text().strip()
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return age > 60 and not Path(f"/sys/class/net/{bridge_name(inst)}").exists()


def release_subnet(net: ipaddress.IPv4Network | str) -> None:
    if ipaddress.ip_network(str(net)).prefixlen != 24:
        return
    path = RESERVATIONS / f"{ipaddress.ip_network(str(net)).network_address}"
    path.unlink(missing_ok=True)
    for d in (RESERVATIONS, RESERVATIONS.parent):
        try:
            d.rmdir()  # only when empty: other twins may hold reservations
        except OSError:
            break


def host_ip(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address + 1)


def pod_ip(net: ipaddress.IPv4Network, index: int) -> str:
    if not 1 <= index <= 250:
        raise TwinNetError(f"pod index {index} out of range 1..250")
    return str(net.network_address + 1 + index)


@dataclass
class TwinNet:
    """The bridge of one twin instance, and the pods plugged into it."""

    inst: str
    subnet: ipaddress.IPv4Network
    link_mbit: float | None = 100.0

    @property
    def bridge(self) -> str:
        return bridge_name(self.inst)

    @property
    def host_ip(self) -> str:
        return host_ip(self.subnet)

    @classmethod
    def create(cls, inst: str, link_mbit: float | None = 100.0) -> TwinNet:
        subnet = reserve_subnet(inst)
        net = cls(inst, subnet, link_mbit)
        try:
            br = net.bridge
            sh("ip", "link", "add", br, "type", "bridge")
            sh("ip", "addr", "add", f"{net.host_ip}/24", "dev", br)
            sh("ip", "link", "set", br, "up")
            for rule in net._iptables_rules():
                sh("iptables", "-I", "FORWARD", "1", *rule)
        except Exception:
            net.destroy()
            raise
        return net

    def _iptables_rules(self) -> list[list[str]]:
        c = ["-m", "comment", "--comment", _comment(self.inst), "-j", "DROP"]
        return [
            ["-i", self.bridge, "!", "-o", self.bridge, *c],
            ["-o", self.bridge, "!", "-i", self.bridge, *c],
        ]

    def add_pod(self, index: int, ifname: str = "eth0") -> tuple[str, str]:
        """Create the pod's namespace and link, named `ifname` in the pod (RunPod: eth0; Instant Clusters: ens1);
        returns (netns name, pod ip)."""
        ns, veth, peer = (
            netns_name(self.inst, index),
            veth_name(self.inst, index),
            f"r1c{self.inst}{index:02x}",
        )
        ip = pod_ip(self.subnet, index)
        sh("ip", "netns", "add", ns)
        try:
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "link", "set", "lo", "up", netns=ns)
            sh("ip", "link", "set", peer, "name", ifname, netns=ns)
            sh("ip", "addr", "add", f"{ip}/24", "dev", ifname, netns=ns)
            sh("ip", "link", "set", ifname, "up", netns=ns)
            sh("ip", "route", "add", "default", "via", self.host_ip, netns=ns)
            # inside the pod, anything not for the twin is refused at once (the host would drop it silently:
            # DNS lookups and connects to the outside would hang for their full timeouts instead of failing)
            for rule in (["-o", "lo"], ["-d", str(self.subnet)]):
                sh("iptables", "-w", "-A", "OUTPUT", *rule, "-j", "ACCEPT", netns=ns)
            sh(
                "iptables",
                "-w",
                "-A",
                "OUTPUT",
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-net-unreachable",
                netns=ns,
            )
            if self.link_mbit:
                self._shape(veth)
        except Exception:
            self.remove_pod(index)
            raise
        return ns, ip

    def _shape(self, veth: str) -> None:
        """HTB on the host-side veth egress (traffic into the pod): from other pods at link_mbit, else free."""
        rate = f"{self.link_mbit:g}mbit"
        sh("tc", "qdisc", "add", "dev", veth, "root", "handle", "1:", "htb", "default", "20")
        sh(
            "tc",
            "class",
            "add",
            "dev",
            veth,
            "parent",
            "1:",
            "classid",
            "1:10",
            "htb",
            "rate",
            rate,
            "ceil",
            rate,
        )
        sh("tc", "class", "add", "dev", veth, "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit")
        # from the host: unshaped (prio 1 wins); from any other address of the subnet (a pod): shaped.
        u32 = ["tc", "filter", "add", "dev", veth, "parent", "1:", "protocol", "ip"]
        sh(*u32, "prio", "1", "u32", "match", "ip", "src", f"{self.host_ip}/32", "flowid", "1:20")
        sh(*u32, "prio", "2", "u32", "match", "ip", "src", str(self.subnet), "flowid", "1:10")

    def remove_pod(self, index: int) -> None:
        """Delete the pod's veth and namespace (its processes must be gone). Missing counts as done."""
        veth, ns = veth_name(self.inst, index), netns_name(self.inst, index)
        if Path(f"/sys/class/net/{veth}").exists():
            sh("ip", "link", "del", veth, check=False)
        if Path(f"/run/netns/{ns}").exists():
            sh("ip", "netns", "del", ns)

    def destroy(self) -> None:
        """Remove the bridge, the iptables rules and the subnet reservation (pods first: remove_pod)."""
        for index in pod_indices(self.inst):
            self.remove_pod(index)
        for rule in self._iptables_rules():
            while sh("iptables", "-C", "FORWARD", *rule, check=False).returncode == 0:
                sh("iptables", "-D", "FORWARD", *rule)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            sh("ip", "link", "del", self.bridge)
        release_subnet(self.subnet)


def destroy_instance(inst: str, subnet: str | None) -> None:
    """Remove every network object of an instance, knowing only its id (and subnet, when it was recorded)."""
    if subnet is None and RESERVATIONS.is_dir():
        for path in RESERVATIONS.iterdir():
            try:
                if path.read_text().strip() == inst:
                    subnet = f"{path.name}/24"
            except OSError:
                continue
    # the twin's subnets are IPv4 (reserve_subnet)
    net = ipaddress.IPv4Network(subnet) if subnet else ipaddress.IPv4Network("0.0.0.0/32")
    TwinNet(inst, net).destroy()


def pod_indices(inst: str) -> list[int]:
    prefix = f"r1lab-{inst}-"
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return sorted(int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit())


def leftovers(inst: str, subnet: str | None = None) -> dict[str, list[str]]:
    """Every kernel object of this instance still present: namespaces, links, routes, iptables rules, qdiscs.

    Empty lists everywhere means the network part of the twin is gone."""
    netns = [
        n for n in sh("ip", "netns", "list", check=False).stdout.split() if n.startswith(f"r1lab-{inst}-")
    ]
    links = [
        ln.strip()
        for ln in sh("ip", "-o", "link", "show", check=False).stdout.splitlines()
        if inst in ln.split(":", 2)[1]
    ]
    routes = []
    if subnet:
        prefix = str(ipaddress.ip_network(subnet).network_address).rsplit(".", 1)[0] + "."
        routes = [
            r
            for r in sh("ip", "-4", "-o", "route", "show", "table", "all", check=False).stdout.splitlines()
            if prefix in r
        ]
        routes += [
            a for a in sh("ip", "-4", "-o", "addr", "show", check=False).stdout.splitlines() if prefix in a
        ]
    rules = [r for r in sh("iptables", "-S", check=False).stdout.splitlines() if _comment(inst) in r]
    reservation = []
    if subnet:
        path = RESERVATIONS / str(ipaddress.ip_network(subnet).network_address)
        if path.exists():
            reservation.append(str(path))
    return {"netns": netns, "links": links, "routes": routes, "iptables": rules, "reservations": reservation}
