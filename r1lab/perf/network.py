"""Interconnects: links inside a node and between nodes, with alpha-beta collective costs.

`Link(name, gb_s, latency_us)`: gb_s is the usable bandwidth per GPU per direction in GB/s (decimal).
`LINKS` holds the presets; `internode_link(network)` maps `provider.network` to one; `intranode_link(gpu, tp)`
picks the link a TP group of a GPU type uses. Collectives use ring algorithms:
all-reduce moves 2(n-1)/n of the message per GPU, all-gather/all-to-all (n-1)/n.
Sources: datasheets and RunPod docs (facts.md); measured all-reduce curves in a hardware profile win where present.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    name: str
    gb_s: float  # usable GB/s per GPU per direction
    latency_us: float  # one hop, incl. software
    description: str = ""

    def transfer_s(self, nbytes: float) -> float:
        """Point-to-point send of nbytes."""
        return self.latency_us * 1e-6 + nbytes / (self.gb_s * 1e9)


LINKS: dict[str, Link] = {
    "nvswitch-nvl4": Link(
        "nvswitch-nvl4", 450.0, 8.0, "NVSwitch, NVLink 4 (H100/H200 SXM): 900 GB/s bidirectional"
    ),
    "nvswitch-nvl5": Link("nvswitch-nvl5", 900.0, 8.0, "NVSwitch, NVLink 5 (B200): 1.8 TB/s bidirectional"),
    "nvlink-bridge": Link(
        "nvlink-bridge", 300.0, 8.0, "H100 NVL: NVLink bridge between a pair, 600 GB/s bidir."
    ),
    "pcie-gen5": Link("pcie-gen5", 64.0, 15.0, "PCIe Gen5 x16: 128 GB/s bidirectional, ~64 GB/s each way"),
    "global-networking": Link(
        "global-networking", 100e6 / 8 / 1e9, 1000.0, "RunPod Global Networking between pods: 100 Mbps (docs)"
    ),
    "instant-cluster": Link(
        "instant-cluster", 3.2e12 / 8 / 8 / 1e9, 5.0, "RunPod Instant Cluster: 3.2 Tbps per node over 8 GPUs"
    ),
    "infiniband": Link("infiniband", 400e9 / 8 / 1e9, 3.0, "InfiniBand NDR 400 Gb/s per GPU"),
    "none": Link("none", 0.0, 0.0, "no link between pods (single pod only)"),
}

NETWORK_TO_LINK = {
    "global-networking": "global-networking",
    "instant-cluster": "instant-cluster",
    "infiniband": "infiniband",
    "none": "none",
}


def internode_link(network: str) -> Link:
    if network not in NETWORK_TO_LINK:
        raise ValueError(f"unknown network {network!r}; expected one of {sorted(NETWORK_TO_LINK)}")
    return LINKS[NETWORK_TO_LINK[network]]


def ring_allreduce_s(nbytes: float, world: int, link: Link, alpha_us: float | None = None) -> float:
    """Ring all-reduce time: alpha + 2(n-1)/n * bytes / bandwidth."""
    if world <= 1:
        return 0.0
    if link.gb_s <= 0:
        return float("inf")
    alpha = (link.latency_us if alpha_us is None else alpha_us) * 1e-6
    return alpha + 2.0 * (world - 1) / world * nbytes / (link.gb_s * 1e9)


def all_to_all_s(nbytes_per_gpu: float, world: int, link: Link) -> float:
    """All-to-all where each GPU sends nbytes_per_gpu spread over the others."""
    if world <= 1:
        return 0.0
    if link.gb_s <= 0:
        return float("inf")
    return link.latency_us * 1e-6 + (world - 1) / world * nbytes_per_gpu / (link.gb_s * 1e9)
