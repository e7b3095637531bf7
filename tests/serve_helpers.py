"""Helpers for the serve tests: free ports, a minimal mocker timing table, loopback nodes."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import numpy as np

from r1lab.config import Experiment
from r1lab.serve.commands import MockerTiming, Node, Ports


def free_port_block(n: int = 1, below_32768: bool = False) -> int:
    """A port p such that p..p+n-1 are all free on 127.0.0.1 right now (Dynamo reads DYN_SYSTEM_PORT as an
    i16, so system ports must stay below 32768: those are drawn at random from 20000-32000)."""
    rng = random.Random()
    for _ in range(200):
        if below_32768:
            base = rng.randrange(20000, 32000)
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port block")


def loopback_ports(workers: int = 4) -> Ports:
    return Ports(
        vllm=free_port_block(),
        frontend=free_port_block(),
        ray=free_port_block(),
        ray_dashboard=free_port_block(),
        etcd=free_port_block(),
        etcd_peer=free_port_block(),
        nats=free_port_block(),
        master=free_port_block(),
        dp_rpc=free_port_block(),
        system_base=free_port_block(workers, below_32768=True),
        nixl_base=free_port_block(workers),
        bootstrap_base=free_port_block(workers),
        kv_events_base=free_port_block(workers),
        rpc_base=free_port_block(workers),
        response_stream_base=free_port_block(workers + 1),
    )


def loopback_nodes(exp: Experiment) -> list[Node]:
    """The experiment's serving pods, all on this machine's loopback."""
    out = []
    for pod in exp.serving_pods:
        for i in range(pod.count):
            name = pod.role if pod.count == 1 else f"{pod.role}-{i}"
            out.append(Node(name, pod.role, len(out), "127.0.0.1", pod.gpu_count))
    return out


def write_npz(path: Path, ttft_ms_per_token: float = 0.05, itl_ms: float = 5.0) -> Path:
    """A small mocker-format timing table (prefill TTFT linear in ISL; flat decode ITL)."""
    isl = np.array([16, 128, 1024, 4096, 16384], dtype=np.float64)
    kv = np.array([16, 1024, 16384, 131072], dtype=np.float64)
    ctx = np.array([16, 1024, 16384], dtype=np.float64)
    np.savez(
        path,
        prefill_isl=isl,
        prefill_ttft_ms=5.0 + ttft_ms_per_token * isl,
        decode_active_kv_tokens=kv,
        decode_context_length=ctx,
        decode_itl=np.full((len(kv), len(ctx)), itl_ms),
    )
    return path


def timing(path: Path) -> MockerTiming:
    return MockerTiming(
        write_npz(path),
        kv_bytes_per_token=70272,
        num_gpu_blocks=4096,
        block_size=64,
        max_num_seqs=64,
        deployment="test table (not the performance model)",
    )
