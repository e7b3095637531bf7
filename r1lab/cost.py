"""What a deployment costs: $/h from live prices (dated fallback), the run's total, and $ per million tokens.

Prices are inputs: live catalog prices come from `r1lab.cloud.pricing` (the caller passes them in, so this module
never imports cloud); the params' `cost.prices` are the dated fallback. Every figure carries where its price came
from. On the twin nothing is billed: its figures are what the same pods would cost on RunPod ("modelled").
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from r1lab.config import Cost, Experiment

HOURS_PER_MONTH = 730.0


class PriceError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class PriceQuote:
    """One GPU type's price per GPU-hour and its provenance."""

    gpu_type: str
    usd_per_gpu_hour: float
    date: str
    source: str
    live: bool

    def label(self) -> str:
        return f"${self.usd_per_gpu_hour:.2f}/GPU-h ({'live' if self.live else 'fallback'} {self.date}, {self.source})"


def quote(
    gpu_type: str,
    fallback: Cost,
    live: Mapping[str, float] | None = None,
    live_date: str | None = None,
    resolved: Mapping[str, Any] | None = None,
) -> PriceQuote:
    """The live price when the catalog gave one, else the run's resolved quote (`resolved`: the resolved
    deployment's `prices`, dated when the run was resolved), else the params' dated fallback; a clear error
    otherwise."""
    if live and live.get(gpu_type):
        date = live_date or _dt.datetime.now(_dt.UTC).date().isoformat()
        return PriceQuote(gpu_type, float(live[gpu_type]), date, "runpod catalog", True)
    q = (resolved or {}).get(gpu_type)
    if q is not None:
        return PriceQuote(gpu_type, float(q.usd_per_gpu_hour), str(q.date), str(q.source), False)
    price = fallback.prices.get(gpu_type)
    if price is None:
        raise PriceError(
            f"no price for GPU type {gpu_type!r}: the live catalog gave none and params cost.prices has only "
            f"{sorted(fallback.prices)}; add cost.prices[{gpu_type!r}] with usd_per_gpu_hour and date"
        )
    return PriceQuote(
        gpu_type, price.usd_per_gpu_hour, price.date, price.source or "params cost.prices", False
    )


@dataclass
class DeploymentCost:
    """$/h of every pod group with GPUs, plus the network volume."""

    usd_per_hour: float
    gpus: int
    gpu_usd_per_hour: float  # GPUs alone (what the planner's usd_per_hour counts)
    groups: list[dict[str, Any]]
    volume_usd_per_hour: float
    quotes: dict[str, PriceQuote]
    billed: bool  # False on the twin: the price of the same pods on RunPod, not a bill

    @property
    def label(self) -> str:
        return "measured-gpu" if self.billed else "modelled"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quotes"] = {k: asdict(v) for k, v in self.quotes.items()}
        return d


def deployment_cost(
    exp: Experiment,
    live: Mapping[str, float] | None = None,
    live_date: str | None = None,
    serving_only: bool = True,
    quotes: Mapping[str, Any] | None = None,
) -> DeploymentCost:
    """$/h of the experiment's pods (serving pods by default: the utility pod is gone before load starts), priced
    as `quote` prices (`quotes`: the run's resolved deployment's `prices`)."""
    groups: list[dict[str, Any]] = []
    priced: dict[str, PriceQuote] = {}
    total, gpus = 0.0, 0
    for pod in exp.pods:
        if not pod.gpu_type or not pod.gpu_count or (serving_only and not pod.serves):
            continue
        q = priced.get(pod.gpu_type) or quote(pod.gpu_type, exp.cost, live, live_date, quotes)
        priced[pod.gpu_type] = q
        usd = q.usd_per_gpu_hour * pod.gpu_count * pod.count
        groups.append({"role": pod.role, "gpu_type": pod.gpu_type, "gpus": pod.gpu_count * pod.count,
                       "usd_per_hour": usd})  # fmt: skip
        total += usd
        gpus += pod.gpu_count * pod.count
    volume = exp.volume.size_gb * exp.cost.volume_usd_per_gb_month / HOURS_PER_MONTH
    return DeploymentCost(total + volume, gpus, total, groups, volume, priced, exp.provider.kind == "runpod")


def usd_per_mtok(usd_per_hour: float | None, tok_s: float | None) -> float | None:
    """$ per million tokens at a sustained rate of tok_s tokens/s (None when either is missing or zero)."""
    if not usd_per_hour or not tok_s or tok_s <= 0:
        return None
    return usd_per_hour / (tok_s * 3600.0) * 1e6


def point_costs(points: Iterable[Mapping[str, Any]], usd_per_hour: float) -> list[dict[str, Any]]:
    """$ per million output and input tokens at each load point of summary.json."""
    return [
        {
            "scenario": p.get("scenario"),
            "point": p.get("point"),
            "concurrency": p.get("concurrency"),
            "usd_per_hour": usd_per_hour,
            "usd_per_mtok_out": usd_per_mtok(usd_per_hour, p.get("output_tok_s")),
            "usd_per_mtok_in": usd_per_mtok(usd_per_hour, p.get("input_tok_s")),
        }
        for p in points
    ]


@dataclass
class RunCost:
    usd: float
    hours: float
    items: list[dict[str, Any]] = field(default_factory=list)
    billed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_time(text: str) -> float:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_total(
    exp: Experiment,
    ledger_entries: list[dict[str, Any]],
    *,
    live: Mapping[str, float] | None = None,
    live_date: str | None = None,
    now: float | None = None,
    quotes: Mapping[str, Any] | None = None,
) -> RunCost:
    """The run's cost from its ledger: each pod from `created` to `deleted` (or now, if still live) at its rate,
    and each network volume at its $/GB-month. A pod's rate is the `usd_per_hour` the cloud layer recorded at
    creation, else its GPUs (ledger meta gpu_type, gpu_count, or the params pod group whose role ends its name,
    r1lab-<run_id>-<role>) at the quoted price (`quote`; `quotes`: the run's resolved deployment's `prices`). The
    one function that prices a run: the budget guard and the report both call it."""
    now = now if now is not None else _dt.datetime.now(_dt.UTC).timestamp()
    created: dict[tuple[str, str], dict[str, Any]] = {}
    ended: dict[tuple[str, str], float] = {}
    for e in ledger_entries:
        key = (e.get("kind", ""), e.get("id", ""))
        if e.get("event") == "created":
            created[key] = e
        elif e.get("event") == "deleted":
            ended[key] = _parse_time(e["time"])
    roles = {p.role: p for p in exp.pods}
    items, total, t_first, t_last = [], 0.0, None, None
    for key, e in created.items():
        kind = key[0]
        if not any(k in kind for k in ("pod", "cluster", "volume")):
            continue
        start = _parse_time(e["time"])
        end = ended.get(key, now)
        hours = max(end - start, 0.0) / 3600.0
        t_first = start if t_first is None else min(t_first, start)
        t_last = end if t_last is None else max(t_last, end)
        meta = e.get("meta") or {}
        if "volume" in kind:
            size = float(meta.get("size_gb") or exp.volume.size_gb)
            usd = size * exp.cost.volume_usd_per_gb_month / HOURS_PER_MONTH * hours
            items.append({"kind": kind, "name": e.get("name"), "hours": hours, "usd": usd, "size_gb": size})
        else:
            role = str(e.get("name", "")).rsplit("-", 1)[-1]
            pod = roles.get(role)
            gpu_type = meta.get("gpu_type") or (pod.gpu_type if pod else None)
            gpus = int(meta.get("gpu_count") or (pod.gpu_count if pod else 0))
            if meta.get("usd_per_hour") is not None:  # the rate the cloud layer recorded at creation
                rate = float(meta["usd_per_hour"])
            elif gpu_type and gpus:
                rate = quote(gpu_type, exp.cost, live, live_date, quotes).usd_per_gpu_hour * gpus
            else:
                rate = 0.0
            usd = rate * hours
            items.append({"kind": kind, "name": e.get("name"), "hours": hours, "usd": usd, "gpu_type": gpu_type,
                          "gpus": gpus, "usd_per_hour": rate, "live": key not in ended})  # fmt: skip
        total += usd
    span = ((t_last - t_first) / 3600.0) if t_first is not None and t_last is not None else 0.0
    return RunCost(total, span, items, exp.provider.kind == "runpod")


def topology_comparison(
    predicted: Sequence[Mapping[str, Any]], measured: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows per topology: the planner's predicted $/h, throughput and $/Mtok (00_plan) and, for the topology
    this run deployed, the measured ones at the same load (06_report). `predicted` items need `topology`,
    `usd_per_hour` and `output_tok_s` (or `usd_per_mtok_out`); `measured` has `topology`, `usd_per_hour`,
    `output_tok_s` and optionally `source`."""
    rows = []
    for p in predicted:
        if "topology" not in p:
            raise ValueError(f"topology_comparison: predicted item lacks 'topology': {dict(p)}")
        pred = p.get("usd_per_mtok_out") or usd_per_mtok(p.get("usd_per_hour"), p.get("output_tok_s"))
        row = {
            "topology": p["topology"],
            "fits": p.get("fits", True),
            "predicted_usd_per_hour": p.get("usd_per_hour"),
            "predicted_output_tok_s": p.get("output_tok_s"),
            "predicted_usd_per_mtok_out": pred,
            "measured_usd_per_hour": None,
            "measured_output_tok_s": None,
            "measured_usd_per_mtok_out": None,
            "measured_source": None,
        }
        if measured and measured.get("topology") == p["topology"]:
            row["measured_usd_per_hour"] = measured.get("usd_per_hour")
            row["measured_output_tok_s"] = measured.get("output_tok_s")
            row["measured_usd_per_mtok_out"] = usd_per_mtok(
                measured.get("usd_per_hour"), measured.get("output_tok_s")
            )
            row["measured_source"] = measured.get("source")
        rows.append(row)
    return rows
