"""Start Locust (headless master + worker processes, each its own process so gevent patches first) with r1lab's
locustfile; records land in r1lab's schema (`requests.jsonl`) and Locust's own CSV stats beside them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from r1lab.bench.workloads import write_workload  # noqa: F401 - re-exported (bench.cli, tests)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class LocustRun:
    records_path: Path
    stats_csv: Path
    returncode: int
    log: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_locust(
    url: str,
    workload_path: str | Path,
    out_dir: str | Path,
    *,
    users: int,
    duration_s: float,
    workers: int = 2,
    spawn_rate: float | None = None,
    scenario: str = "locust",
    point: str | None = None,
    api: str = "completions",
    timeout_s: float = 600.0,
) -> LocustRun:
    """Run Locust distributed (master + `workers`; 0: a single local process) for `duration_s` at `users`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    point = point or f"u{users}"
    env = dict(os.environ, R1LAB_LOCUST_WORKLOAD=str(workload_path), R1LAB_LOCUST_OUT=str(out / "requests.jsonl"),
               R1LAB_LOCUST_API=api, R1LAB_SCENARIO=scenario, R1LAB_POINT=point,
               R1LAB_LOCUST_TIMEOUT_S=str(timeout_s), R1LAB_LOCUST_USERS=str(users))  # fmt: skip
    loc = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    common = ["--headless", "-u", str(users), "-r", str(spawn_rate or users), "-t", f"{int(duration_s)}s",
              "--host", url, "--csv", str(out / "locust"), "--only-summary", "--stop-timeout", str(int(timeout_s)), "--exit-code-on-error", "0"]  # fmt: skip
    procs: list[subprocess.Popen] = []
    logs = [out / "locust-master.log"] + [out / f"locust-worker{i}.log" for i in range(workers)]
    try:
        if workers:
            port = _free_port()
            master = subprocess.Popen(
                loc + common + ["--master", "--expect-workers", str(workers), "--master-bind-host", "127.0.0.1",
                                "--master-bind-port", str(port)],
                env=env, stdout=logs[0].open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            procs.append(master)
            for i in range(workers):
                procs.append(subprocess.Popen(
                    loc + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                    env=env, stdout=logs[i + 1].open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip
        else:
            master = subprocess.Popen(loc + common, env=env, stdout=logs[0].open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
            procs.append(master)
        rc = master.wait(timeout=duration_s + timeout_s + 120)
        for p in procs[1:]:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    log = "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in logs[: 1 + workers] if p.exists())
    return LocustRun(out / "requests.jsonl", out / "locust_stats.csv", rc, log)
