"""Stage 05 (load): the params' scenarios against the last serving stage's endpoint, recorded and summarized.

`target(ctx, ...)` finds the endpoint and the served model's tokenizer; `run(ctx, target, only)` runs the load with
a real Prometheus scraping the servers meanwhile, writes summary.json/.csv and requests.parquet and returns a typed
`LoadResult`; notebook 05 calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab import cost, monitor
from r1lab.bench import scenarios
from r1lab.bench.metrics import Slo
from r1lab.bench.records import consolidate
from r1lab.rundir import RunContext
from r1lab.steps import load_shell, monitoring


@dataclass(frozen=True)
class Target:
    url: str  # the OpenAI endpoint the load goes to
    tokenizer_dir: Path  # the served model's tokenizer (prompts are built offline with it)


@dataclass(frozen=True)
class LoadResult:
    requests: dict[str, int]  # scenario -> requests recorded
    summary: dict[str, Any]  # summary.json
    requests_parquet: Path
    source: str  # measured-gpu | measured-twin

    def points_table(self) -> Any:  # pandas.DataFrame
        return scenarios.points_table(self.summary)

    def client_limited_lines(self) -> list[str]:
        return scenarios.client_limited_lines(self.summary)

    def prefix_cache_lines(self) -> list[str]:
        return scenarios.prefix_cache_lines(self.summary)

    def saturation_and_trends(self) -> dict[str, Any]:
        """The sweep's knee and the stress phase's drift checks."""
        trends = {k: {"ok": v["ok"], "checks": v["checks"]} for k, v in self.summary["trends"].items()}
        return {"saturation": self.summary["saturation"], "trends": trends}


def target(ctx: RunContext, endpoint_url: str = "", model_dir: str = "") -> Target:
    """The endpoint and tokenizer given, else what the last serving stage left in the run."""
    url, tokenizer_dir = scenarios.resolve_target(ctx, endpoint_url, model_dir)
    return Target(url, Path(tokenizer_dir))


def run(ctx: RunContext, to: Target, only: list[str] | None = None) -> LoadResult:
    """Run the params' scenarios (or those in `only`) against `to`, every request recorded as it ends, with the
    server series scraped into metrics.parquet; then summary.json (with $/Mtok from the deployment's $/h, labelled
    modelled on the twin) and requests.parquet."""
    exp = ctx.exp
    with monitoring(ctx):  # a real Prometheus scrapes the frontend and workers meanwhile -> metrics.parquet
        records = scenarios.run_load(
            exp.load, url=to.url, model_dir=to.tokenizer_dir, model=exp.model.served_name, run_dir=ctx.run_dir,
            only=only, shell=load_shell(ctx),  # load.run_on "pod": the generator runs next to the server
            points=ctx.resolved.load_points,  # the expanded load points, as the run resolved them (and 00 planned)
        )  # fmt: skip
    dep = cost.deployment_cost(exp, quotes=ctx.resolved.prices)  # priced as the run was resolved
    slo = exp.load.slo
    # server series (KV usage, memory) for the stress trend checks
    metrics_file = ctx.run_dir / "metrics.parquet"
    source = "measured-gpu" if exp.provider.kind == "runpod" else "measured-twin"
    summary = scenarios.summarize_run(
        ctx.run_dir, scenarios=exp.load.scenarios, slo=Slo(slo.ttft_ms, slo.tpot_ms, slo.e2el_ms),
        gpus=dep.gpus, usd_per_hour=dep.usd_per_hour,
        metrics=monitor.store.load(metrics_file) if metrics_file.exists() else None, source=source,
    )  # fmt: skip
    return LoadResult(
        {name: len(rs) for name, rs in records.items()}, summary, consolidate(ctx.run_dir), source
    )
