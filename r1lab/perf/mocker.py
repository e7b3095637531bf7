"""Twin timing: Dynamo mocker tables and CLI arguments for one simulated deployment.

`mocker_setup(hardware, parallelism, engine, out_dir, ...) -> MockerSetup` writes `<out_dir>/<slug>.npz` in the
format `python -m dynamo.mocker --planner-profile-data` reads (ai-dynamo 1.6.1,
dynamo/mocker/utils/planner_profiler_perf_data_converter.py: `is_mocker_format_npz`):

  prefill_isl[n]            tokens prefilled in one iteration (grid)
  prefill_ttft_ms[n]        time of that iteration, ms
  decode_active_kv_tokens[a] active KV tokens of the decode batch (grid, 0 .. KV capacity)
  decode_context_length[c]  mean context per sequence = active KV tokens / batch size (grid)
  decode_itl[a, c]          time of one decode iteration, ms

The mocker looks values up by binary search (prefill by the iteration's prefill tokens; decode by active KV
tokens and their mean context), and for an aggregated engine adds the prefill and decode lookups of a mixed step.
Times are `ops.StepModel.step_s` of the same deployment `predict()` uses, so the twin and the planner agree.

`MockerSetup.args` holds the matching flags: --planner-profile-data, --kv-bytes-per-token (MLA latent, all
layers: the mocker's own formula is wrong for MLA), --num-gpu-blocks-override (KV blocks per DP rank from
memory_plan), --block-size, --max-num-seqs, --max-num-batched-tokens, and --data-parallel-size when DP > 1,
plus --disaggregation-mode / --kv-transfer-bandwidth for P/D workers.

`mocker_setups_for(resolved, out_dir)` does it for every worker group of a resolved deployment ("engine", or
"prefill" and "decode" under Dynamo P/D), keyed like r1lab.serve.commands' `mocker` timing map (its MockerTiming takes
npz_path, kv_bytes_per_token, num_gpu_blocks, block_size, max_num_seqs, deployment from a MockerSetup).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from r1lab.model import ModelSpec, Parallelism
from r1lab.perf import hardware
from r1lab.perf.memory import DEFAULT_BLOCK_SIZE, MemoryPlan, memory_plan
from r1lab.perf.ops import Deployment
from r1lab.perf.predict import _step_model, parse_parallelism
from r1lab.resolved import ResolvedDeployment

NPZ_KEYS = (
    "prefill_isl",
    "prefill_ttft_ms",
    "decode_active_kv_tokens",
    "decode_context_length",
    "decode_itl",
)


@dataclass
class MockerSetup:
    npz_path: Path
    args: list[str]
    kv_bytes_per_token: int
    num_gpu_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    deployment: str
    memory: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["npz_path"] = str(self.npz_path)
        return d


def _grid(lo: float, hi: float, n: int) -> np.ndarray:
    """Geometric-ish grid: dense at small values where step time changes fastest, always including ends."""
    if hi <= lo:
        return np.array([lo, lo + 1.0])
    g = np.concatenate([np.geomspace(max(lo, 1.0), hi, n), np.linspace(lo, hi, n // 2)])
    return np.unique(np.round(g))


def mocker_setup(
    hardware_name: str,
    parallelism: str | Parallelism,
    engine: str,
    out_dir: str | Path,
    *,
    kv_dtype: str = "auto",
    gpu_memory_utilization: float = 0.90,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
    max_model_len: int = 16384,
    gpus_per_node: int = 8,
    network_name: str = "none",
    num_speculative_tokens: int = 0,
    disaggregation_mode: str | None = None,
    kv_transfer_gb_s: float | None = None,
    resolution: int = 48,
    profile: str | None = None,
    decode_tp: int | None = None,
    memory: MemoryPlan | None = None,
) -> MockerSetup:
    """Write the NPZ for one deployment and return the mocker CLI args; raises if the model does not fit.

    Under P/D (`disaggregation_mode` prefill|decode) `--kv-bytes-per-token` is what the mocker times the KV
    transfer with (its `kv_transfer_bytes_per_token`; the GPU blocks are given by count): the bytes that cross
    the link per prompt token, one latent copy per decode TP rank (`decode_tp`, default this instance's TP).
    `memory`: the instance's memory plan where the caller has it (r1lab.resolve.instance_memory); else built here."""
    hw = hardware.gpu(hardware_name)
    par = parse_parallelism(parallelism)
    spec = ModelSpec.deepseek_r1()
    mem = memory or memory_plan(
        hw.runpod_id,
        par,
        kv_dtype,
        gpu_memory_utilization,
        max_num_batched_tokens,
        max_num_seqs,
        DEFAULT_BLOCK_SIZE,
        max_model_len=max_model_len,
        num_speculative_tokens=num_speculative_tokens,
    )
    if not mem.fits:
        raise ValueError(f"{hw.short} {par.label()}: {mem.reason}")
    dep = Deployment(
        hw.runpod_id,
        par,
        engine,
        kv_dtype,
        gpus_per_node,
        network_name,
        num_speculative_tokens,
        profile,
        spec,
    )
    sm = _step_model(dep)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(
        r"[^a-z0-9]+",
        "-",
        f"{hw.short} {par.label()} {engine} {kv_dtype} {disaggregation_mode or 'agg'}".lower(),
    ).strip("-")
    # the mocker divides DP ranks itself: tables describe one replica
    pre_max = (
        max_num_batched_tokens
        if disaggregation_mode != "prefill"
        else max(max_num_batched_tokens, max_model_len)
    )
    isl = _grid(1, pre_max, resolution)
    ttft = np.array([sm.step_s(0, 0, n, n * (n + 1) / 2) * 1e3 for n in isl])
    kv_cap = max(mem.kv_tokens, DEFAULT_BLOCK_SIZE)
    kv = _grid(0, kv_cap, resolution)
    ctx = _grid(1, max_model_len, resolution)
    itl = np.zeros((len(kv), len(ctx)))
    for i, a in enumerate(kv):
        for j, c in enumerate(ctx):
            batch = min(max(a / c, 1.0), max_num_seqs)
            itl[i, j] = sm.step_s(batch, max(a, c)) * 1e3
    path = out / f"{slug}.npz"
    np.savez(
        path,
        prefill_isl=isl.astype(np.float64),
        prefill_ttft_ms=ttft,
        decode_active_kv_tokens=kv.astype(np.float64),
        decode_context_length=ctx.astype(np.float64),
        decode_itl=itl,
    )
    kvb = (
        spec.kv_transfer_bytes_per_token(kv_dtype, decode_tp or par.tp)
        if disaggregation_mode in ("prefill", "decode")
        else spec.kv_bytes_per_token(kv_dtype)
    )
    args = [
        "--planner-profile-data",
        str(path),
        "--kv-bytes-per-token",
        str(kvb),
        "--num-gpu-blocks-override",
        str(mem.num_blocks),
        "--block-size",
        str(DEFAULT_BLOCK_SIZE),
        "--max-num-seqs",
        str(max_num_seqs),
        "--max-num-batched-tokens",
        str(max_num_batched_tokens),
    ]
    if par.dp > 1:
        args += ["--data-parallel-size", str(par.dp)]
    if disaggregation_mode:
        if disaggregation_mode not in ("prefill", "decode", "agg"):
            raise ValueError(f"disaggregation_mode must be prefill|decode|agg, got {disaggregation_mode!r}")
        args += ["--disaggregation-mode", disaggregation_mode]
        if kv_transfer_gb_s:
            args += ["--kv-transfer-bandwidth", f"{kv_transfer_gb_s:g}"]
    setup = MockerSetup(
        npz_path=path,
        args=args,
        kv_bytes_per_token=kvb,
        num_gpu_blocks=mem.num_blocks,
        block_size=DEFAULT_BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        deployment=dep.label(),
        memory=mem.as_dict(),
    )
    (out / f"{slug}.json").write_text(
        json.dumps(setup.as_dict(), indent=1, default=str) + "\n", encoding="utf-8"
    )
    return setup


def check_npz(path: str | Path) -> None:
    """Raise ValueError naming the file and key if `path` is not a mocker-format table."""
    with np.load(path) as d:
        for k in NPZ_KEYS:
            if k not in d:
                raise ValueError(f"{path}: missing array {k!r}")
        a, c, itl = d["decode_active_kv_tokens"], d["decode_context_length"], d["decode_itl"]
        if itl.shape != (len(a), len(c)):
            raise ValueError(f"{path}: decode_itl shape {itl.shape} != ({len(a)}, {len(c)})")
        for k in ("prefill_isl", "decode_active_kv_tokens", "decode_context_length"):
            if np.any(np.diff(d[k]) <= 0):
                raise ValueError(f"{path}: {k} must be strictly increasing (the mocker binary-searches it)")
        if len(d["prefill_isl"]) != len(d["prefill_ttft_ms"]):
            raise ValueError(f"{path}: prefill_isl and prefill_ttft_ms differ in length")


def mocker_setups_for(r: ResolvedDeployment, out_dir: str | Path) -> dict[str, MockerSetup]:
    """Tables and args for every mocker worker group of a resolved deployment (r1lab.resolve), keyed like
    r1lab.serve's timing map: {"engine": ...} for aggregated serving, {"prefill": ..., "decode": ...} under Dynamo
    P/D; each group's KV capacity from the memory plan the deployment holds for it."""
    from r1lab.perf import network
    from r1lab.perf.planner import resolved_topology

    topo = resolved_topology(r)
    s = r.engine
    common: dict[str, Any] = dict(
        kv_dtype=s.kv_dtype,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_model_len=s.max_model_len or 16384,
        gpus_per_node=topo.gpus_per_node,
        num_speculative_tokens=s.num_speculative_tokens,
    )

    def memory(role: str) -> MemoryPlan:
        return MemoryPlan.from_dict(r.group(role).memory)

    if topo.disagg is None:
        return {
            "engine": mocker_setup(
                topo.gpu_type,
                topo.par,
                s.engine,
                out_dir,
                network_name=topo.network,
                memory=memory("engine"),
                **common,
            )
        }
    d = topo.disagg
    link = network.LINKS.get(d.network) or network.internode_link(d.network)
    gb_s = d.kv_transfer_gb_s or link.gb_s
    return {
        "prefill": mocker_setup(
            topo.gpu_type,
            d.prefill,
            s.engine,
            out_dir,
            disaggregation_mode="prefill",
            kv_transfer_gb_s=gb_s,
            decode_tp=topo.par.tp,
            memory=memory("prefill"),
            **common,
        ),
        "decode": mocker_setup(
            topo.gpu_type,
            topo.par,
            s.engine,
            out_dir,
            disaggregation_mode="decode",
            kv_transfer_gb_s=gb_s,
            memory=memory("decode"),
            **common,
        ),
    }
