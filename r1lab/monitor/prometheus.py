"""A real Prometheus server for one run: started on the twin host (Debian's /usr/bin/prometheus, data dir in
the run dir) or on a RunPod head pod through an Executor, bound to 127.0.0.1 on a free port.

On this machine the server is a ledger `local-process` (teardown kills it even if the notebook dies); on a pod
it lives and dies with the pod, and is reached through the Executor's port forward.
"""

from __future__ import annotations

import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.execution import Background, CommandError, Executor, LocalExecutor, free_port
from r1lab.monitor.exporters import poll_ok
from r1lab.monitor.targets import Target, render_config
from r1lab.teardown import Ledger

PROMETHEUS_BIN = "/usr/bin/prometheus"
# Installs Prometheus on a pod (Ubuntu images, e.g. vllm/vllm-openai, have it in universe) unless present.
INSTALL_ON_POD = (
    "command -v prometheus >/dev/null 2>&1 || "
    "(export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
    "apt-get install -y -qq --no-install-recommends prometheus prometheus-node-exporter >/dev/null)"
)


class PrometheusError(RuntimeError):
    pass


def command(config: str, data_dir: str, port: int, binary: str = "prometheus") -> str:
    """The exact server command (recorded under commands/ by callers)."""
    return " ".join(
        [
            shlex.quote(binary),
            f"--config.file={shlex.quote(config)}",
            f"--storage.tsdb.path={shlex.quote(data_dir)}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
    )


@dataclass
class Prometheus:
    """A running server: where it lives (executor, workdir), its pid and port on that host."""

    executor: Executor
    workdir: str
    port: int
    process: Background
    ledger_id: str | None = None
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _local_port: int | None = None

    @property
    def url(self) -> str:
        """Base URL reachable from this machine (through the executor's forward on pods)."""
        if self._local_port is None:
            self._local_port = self._stack.enter_context(self.executor.forward(self.port))
        return f"http://127.0.0.1:{self._local_port}"

    def alive(self) -> bool:
        return self.executor.alive(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        res = self.executor.run(f"tail -n {lines} {shlex.quote(self.process.log)}", check=False, timeout=20)
        return res.output

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /-/ready until 200, while checking the process still lives; a clear error otherwise."""
        outcome, last = poll_ok(f"{self.url}/-/ready", self.alive, timeout)
        if outcome == "exited":
            raise PrometheusError(
                f"prometheus on {self.executor.name} exited during start-up; log {self.process.log}:\n"
                f"{self.log_tail()}"
            )
        if outcome != "ok":
            raise PrometheusError(
                f"prometheus on {self.executor.name} not ready after {timeout:.0f}s ({last})"
            )

    def wait_scraped(self, n_targets: int, timeout: float = 30.0) -> None:
        """Wait until `n_targets` targets have been scraped at least once (healthy or not)."""
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as resp:
                active = json.load(resp)["data"]["activeTargets"]
            scraped = [t for t in active if not t.get("lastScrape", "0001").startswith("0001")]
            if len(scraped) >= n_targets:
                return
            time.sleep(0.25)
        raise PrometheusError(f"prometheus did not scrape {n_targets} targets within {timeout:.0f}s")

    def _last_scrapes(self) -> dict[str, str]:
        import json

        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as resp:
            active = json.load(resp)["data"]["activeTargets"]
        return {t.get("scrapeUrl", str(i)): t.get("lastScrape", "") for i, t in enumerate(active)}

    def server_time(self) -> float:
        """The server's clock now (the `time()` query), in Unix seconds: scrape times are on this clock."""
        import json

        with urllib.request.urlopen(f"{self.url}/api/v1/query?query=time()", timeout=5) as resp:
            return float(json.load(resp)["data"]["result"][0])

    def wait_next_scrape(self, timeout: float) -> bool:
        """Wait until every target has been scraped by a scrape that began after the call (its `lastScrape`, the
        start of its last finished scrape on Prometheus's own clock, is later than the server's time at the call):
        the series then cover what happened up to the call. A scrape in flight at the call began before it, so it
        does not count. False when `timeout` ran out."""
        since = self.server_time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if all(_scrape_time(v) > since for v in self._last_scrapes().values()):
                return True
        return False

    def stop(self, ledger: Ledger | None = None) -> None:
        """Stop the server (SIGTERM, it flushes its head block) and record it deleted in the ledger."""
        self._stack.close()
        self._local_port = None
        self.executor.stop(self.process.pid, grace=10.0)
        if ledger is not None and self.ledger_id is not None:
            ledger.deleted("local-process", self.ledger_id)


def start(
    targets: list[Target],
    workdir: str | Path,
    *,
    executor: Executor | None = None,
    ledger: Ledger | None = None,
    name: str = "r1lab-prometheus",
    scrape_interval_s: float = 2.0,
    ray_file_sd: list[str] | None = None,
    install: bool = False,
    binary: str | None = None,
    timeout: float = 60.0,
    config_text: str | None = None,
) -> Prometheus:
    """Write prometheus.yml into `workdir`, start the server there (data in `workdir/data`) and wait until ready.

    `executor` None: this machine (Debian's binary, the run's ledger records it as a local-process).
    On a pod: pass its Executor and `install=True` to apt-get Prometheus if the image lacks it.
    """
    executor = executor or LocalExecutor()
    local = isinstance(executor, LocalExecutor)
    workdir = str(workdir)
    binary = binary or (PROMETHEUS_BIN if local else "prometheus")
    config_text = config_text or render_config(
        targets, scrape_interval_s=scrape_interval_s, ray_file_sd=ray_file_sd
    )
    if install and not local:
        executor.run(INSTALL_ON_POD, timeout=900)
    executor.run(f"mkdir -p {shlex.quote(workdir)}/data", timeout=30)
    config = f"{workdir}/prometheus.yml"
    _write_text(executor, config, config_text)
    last_error: Exception | None = None
    for _attempt in range(3):  # a free port can be taken between probing and binding: retry with another
        port = free_port(executor)
        cmd = command(config, f"{workdir}/data", port, binary)
        proc = executor.start(cmd, log=f"{workdir}/prometheus.log")
        ledger_id = None
        if ledger is not None and local:
            ledger_id = str(proc.pid)
            ledger.record(
                "local-process", ledger_id, name, "local", pid=proc.pid, pgid=proc.pid, command=cmd, port=port
            )
        prom = Prometheus(executor, workdir, port, proc, ledger_id)
        try:
            prom.wait_ready(timeout)
            return prom
        except PrometheusError as exc:
            last_error = exc
            prom.stop(ledger)
            if "address already in use" not in str(exc):
                raise
    raise PrometheusError(f"prometheus could not bind a free port after 3 tries: {last_error}")


@contextmanager
def running(targets: list[Target], workdir: str | Path, **kwargs) -> Iterator[Prometheus]:
    """`with running(targets, dir) as prom:` ... stopped on exit (the ledger still covers a crash)."""
    prom = start(targets, workdir, **kwargs)
    try:
        yield prom
    finally:
        prom.stop(kwargs.get("ledger"))


@contextmanager
def recording(
    targets: list[Target],
    run_dir: str | Path,
    *,
    workdir: str | Path | None = None,
    scrape_interval_s: float = 2.0,
    **kwargs: Any,
) -> Iterator[Prometheus]:
    """Scrape while the block runs, then save [start, end] into run_dir/metrics.parquet and stop the server.

    `workdir` defaults to run_dir/prometheus (the TSDB lives in the run dir, written as it scrapes); on a pod,
    pass `executor=` and a workdir on the pod. Other arguments go to `start`.
    """
    from r1lab.monitor.store import snapshot

    ledger = kwargs.get("ledger")
    prom = start(
        targets, workdir or Path(run_dir) / "prometheus", scrape_interval_s=scrape_interval_s, **kwargs
    )
    try:
        prom.wait_scraped(len(targets))
        t0 = time.time()
        yield prom
        prom.wait_next_scrape(timeout=max(3 * scrape_interval_s, 10.0))  # a scrape of each after the block
        snapshot(prom.url, run_dir, t0, time.time(), step=scrape_interval_s)
    finally:
        prom.stop(ledger)


def recover(run_dir: str | Path, *, ledger: Ledger | None = None, step: float = 1.0) -> Path:
    """metrics.parquet from the TSDB a run left in run_dir/prometheus/data (a run killed before it saved its
    metrics): a local Prometheus is started on that data without scraping, queried over the TSDB's time range,
    and stopped."""
    import json
    import urllib.request

    from r1lab.monitor.store import snapshot

    rd = Path(run_dir)
    data = rd / "prometheus" / "data"
    if not data.is_dir():
        raise PrometheusError(f"{data}: no Prometheus data in this run dir (nothing was scraped)")
    if (rd / "metrics.parquet").exists():
        raise FileExistsError(f"{rd / 'metrics.parquet'} exists: nothing to recover")
    spans = [
        (m["minTime"] / 1000, m["maxTime"] / 1000)
        for m in (json.loads(p.read_text()) for p in data.glob("*/meta.json"))
    ]
    prom = start([], rd / "prometheus", ledger=ledger, name="r1lab-prometheus-recover",
                 config_text="global:\n  scrape_interval: 1h\n")  # fmt: skip
    try:
        with urllib.request.urlopen(f"{prom.url}/api/v1/status/tsdb", timeout=30) as resp:
            head = json.load(resp)["data"]["headStats"]
        if head.get("numSeries"):
            spans.append((head["minTime"] / 1000, head["maxTime"] / 1000))
        if not spans:
            raise PrometheusError(f"{data}: the TSDB holds no samples")
        start_t, end_t = min(a for a, _ in spans), max(b for _, b in spans)
        return snapshot(prom.url, rd, start_t, end_t + 1, step=step)
    finally:
        prom.stop(ledger)


def _scrape_time(stamp: str) -> float:
    """A target's `lastScrape` (RFC 3339, nanoseconds) in Unix seconds; never scraped ("0001-01-01...") is 0."""
    import datetime as dt

    if not stamp or stamp.startswith("0001"):
        return 0.0
    return dt.datetime.fromisoformat(stamp).timestamp()


def _write_text(executor: Executor, path: str, text: str) -> None:
    if isinstance(executor, LocalExecutor):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        return
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(text)
    try:
        executor.put(Path(f.name), path)
    finally:
        Path(f.name).unlink(missing_ok=True)


__all__ = [
    "Prometheus",
    "PrometheusError",
    "start",
    "running",
    "recording",
    "command",
    "CommandError",
    "INSTALL_ON_POD",
]
