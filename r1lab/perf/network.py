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
    per_gpu: bool = True  # gb_s is each GPU's own NIC (rail-optimised fabric); False: one link per node

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
        "global-networking",
        100e6 / 8 / 1e9,
        1000.0,
        "RunPod Global Networking between pods: 100 Mbps (docs)",
        per_gpu=False,
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


# NCCL's own cost model (src/graph/tuning.cc of NVIDIA/nccl, read at 5067397, 2026-06-11): the latencies NCCL uses
# to pick an algorithm and protocol, in us. Base latency per algorithm/protocol, per-hop latency inside a node
# (NVLink) and across the network, and the per-step network overhead NCCL adds on x86 (1 us Intel, 2 us AMD; x3 for
# Simple). LL moves 4 data bytes per 8-byte line (half the link), LL128 120 of 128 bytes.
NCCL_BASE_LAT_US = {"tree_ll": 6.8, "ring_ll": 6.6, "ring_ll128": 14.0, "ring_simple": 8.4}
NCCL_NVLINK_HOP_US = {"tree_ll": 0.6, "ring_ll": 0.6, "ring_ll128": 1.9, "ring_simple": 3.4}
NCCL_NET_HOP_US = {"tree_ll": 5.0, "ring_ll": 2.7, "ring_ll128": 4.0, "ring_simple": 14.0}
NCCL_NET_OVERHEAD_US = 1.0
NCCL_PROTO_EFFICIENCY = {"tree_ll": 0.5, "ring_ll": 0.5, "ring_ll128": 120 / 128, "ring_simple": 1.0}


def multinode_allreduce_s(nbytes: float, world: int, gpus_per_node: int, intra: Link, inter: Link) -> float:
    """All-reduce over `world` ranks spread over nodes of `gpus_per_node`, as NCCL runs it: the fastest of tree-LL
    and ring LL / LL128 / Simple by NCCL's own latency model (`NCCL_*`), each moving 2(n-1)/n of the message.

    Bandwidth: NCCL builds one ring channel per NIC, each crossing a node boundary once in each direction, so a
    rank's ring traffic is limited by min(NVLink, NICs per node x NIC rate) where every GPU has its own NIC
    (`Link.per_gpu`, InfiniBand / Instant Cluster rails), else by the node's one link. NCCL's maintainers quote
    46-48 GB/s per NDR 400 Gb/s NIC (NVIDIA/nccl-tests#290); the link presets carry 50."""
    if world <= 1:
        return 0.0
    if inter.gb_s <= 0:
        return float("inf")
    nodes = max(1, -(-world // gpus_per_node))
    if nodes == 1:
        return ring_allreduce_s(nbytes, world, intra)
    ppn = max(1, world // nodes)
    bw = min(intra.gb_s, inter.gb_s * (ppn if inter.per_gpu else 1)) * 1e9
    nsteps, ninter = 2 * (world - 1), 2 * (nodes - 1)
    log2n = max(1, (nodes - 1).bit_length())
    bus = 2.0 * (world - 1) / world * nbytes
    best = float("inf")
    for proto, base in NCCL_BASE_LAT_US.items():
        net_hop = max(NCCL_NET_HOP_US[proto], inter.latency_us)
        if proto == "tree_ll":
            lat = base + 2 * ((ppn - 1) * NCCL_NVLINK_HOP_US[proto] + log2n * net_hop)
        else:
            overhead = NCCL_NET_OVERHEAD_US * (3 if proto == "ring_simple" else 1)
            intra_hop = max(NCCL_NVLINK_HOP_US[proto], overhead)
            lat = base + (nsteps - ninter) * intra_hop + ninter * net_hop
        best = min(best, lat * 1e-6 + bus / (NCCL_PROTO_EFFICIENCY[proto] * bw))
    return best
