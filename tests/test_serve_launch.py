"""The launcher against real local processes: known failures become one clear error, readiness, clean stop."""

from __future__ import annotations

import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from r1lab.execution import LocalExecutor
from r1lab.serve.commands import API_KEY_ENV, Command, Deployment, Ready
from r1lab.serve.launch import Launcher, ServeError, scan_failure
from r1lab.teardown import Ledger, teardown_run

PY = sys.executable

LOGS = {
    "CUDA out of memory": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.75 GiB. GPU 3 has a total "
    "capacity of 93.10 GiB of which 1.02 GiB is free.",
    "KV cache too small for max_model_len": "ValueError: To serve at least one request with the models's max seq len "
    "(163840), (10.72 GiB KV cache is needed, which is larger than the available KV cache memory (3.20 GiB).",
    "NCCL error": "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, "
    "unhandled system error",
    "NCCL timeout": "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE) "
    "ran for 600000 milliseconds before timing out.",
    "Ray node lost": "ray.exceptions.ActorDiedError: The actor died unexpectedly because its node 5f2c... "
    "has been marked dead",
    "model weights missing": "OSError: /workspace/models/DeepSeek-R1 does not appear to have a file named config.json.",
    "port in use": "OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already "
    "in use",
}


@pytest.mark.parametrize("cause", sorted(LOGS))
def test_scan_failure_names_the_cause(cause: str) -> None:
    found = scan_failure("INFO starting\nINFO loading\n" + LOGS[cause] + "\nINFO shutting down\n")
    assert found is not None and found.cause == cause and found.fix


def test_scan_failure_quiet_on_normal_logs() -> None:
    normal = (
        "INFO 11-27 22:06:35 [cpu.py:521] MLA is enabled on a non-GPU platform\n"
        "INFO:     Application startup complete.\nNCCL INFO Channel 00/02 : 0 1 2 3 4 5 6 7\n"
        "INFO Available KV cache memory: 3.20 GiB\n"
    )
    assert scan_failure(normal) is None


def _dep(*cmds: Command, port: int = 1) -> Deployment:
    return Deployment("single", "t", "vllm", "test", list(cmds), "local", port, "m")


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_oom_in_log_stops_the_wait_with_the_cause(tmp_path: Path) -> None:
    code = f"import time; print({LOGS['CUDA out of memory']!r}, flush=True); time.sleep(60)"
    cmd = Command("vllm-serve", "local", _py(code), ready=Ready(_free_port(), completion=True))
    launcher = Launcher(tmp_path, {"local": LocalExecutor()}, poll_s=0.2)
    with pytest.raises(ServeError) as err:
        launcher.launch(_dep(cmd, port=cmd.ready.port), deadline_s=30)
    assert err.value.cause == "CUDA out of memory" and "fix:" in str(err.value)
    assert str(tmp_path / "logs" / "serve" / "single" / "vllm-serve.log") in str(err.value)
    launcher.stop()
    assert Ledger(tmp_path).live() == []


def test_port_in_use_from_a_real_server(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = Command("http", "local", [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                      ready=Ready(port, "/", completion=False))  # fmt: skip
        with Launcher(tmp_path, {"local": LocalExecutor()}, poll_s=0.2) as launcher:
            with pytest.raises(ServeError) as err:
                launcher.launch(_dep(cmd, port=port), deadline_s=30)
    assert err.value.cause == "port in use"


def test_exit_without_known_cause_and_deadline(tmp_path: Path) -> None:
    dead = Command("dies", "local", _py("import sys; print('something odd happened'); sys.exit(3)"),
                   ready=Ready(_free_port()))  # fmt: skip
    with Launcher(tmp_path / "a", {"local": LocalExecutor()}, poll_s=0.2) as launcher:
        with pytest.raises(ServeError, match="process exited.*something odd happened"):
            launcher.launch(_dep(dead), deadline_s=30)
    silent = Command("silent", "local", _py("import time; time.sleep(60)"), ready=Ready(_free_port()))
    with Launcher(tmp_path / "b", {"local": LocalExecutor()}, poll_s=0.2) as launcher:
        with pytest.raises(ServeError, match=r"not ready after 2 s \(stuck at health\)"):
            launcher.launch(_dep(silent), deadline_s=2)


def test_ready_then_clean_stop_and_teardown(tmp_path: Path) -> None:
    port = _free_port()
    cmd = Command("http", "local", [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                  ready=Ready(port, "/", completion=False))  # fmt: skip
    other = Command("sleeper", "local", _py("import time; time.sleep(120)"))
    launcher = Launcher(tmp_path, {"local": LocalExecutor()}, poll_s=0.2)
    for c in (cmd, other):
        launcher.start(_dep(cmd, other), c)
    launcher._wait_ready(_dep(cmd), launcher.running[0], deadline=1e12, total=30)
    pids = [r.bg.pid for r in launcher.running]
    assert all(LocalExecutor().alive(p) for p in pids)
    assert len(Ledger(tmp_path).live()) == 2
    launcher.stop(grace=5)
    assert not any(LocalExecutor().alive(p) for p in pids) and Ledger(tmp_path).live() == []
    # a second launcher that never stops: the run's teardown stops it from the ledger alone
    again = Launcher(tmp_path, {"local": LocalExecutor()})
    pid = again.start(_dep(other), other).bg.pid
    report = teardown_run(tmp_path)
    assert report.ok and len(report.deleted) == 1 and not LocalExecutor().alive(pid)


_ON_TERM = """
import signal, sys, time
log, name, peers = sys.argv[1], sys.argv[2], int(sys.argv[3])
def say(what):
    with open(log, "a") as f:
        f.write(what + " " + name + "\\n")
def term(*_):
    say("term")
    t0 = time.monotonic()
    while open(log).read().count("term w") < peers:  # a worker exits only once every worker was signalled
        if time.monotonic() - t0 > 30:
            sys.exit(3)
        time.sleep(0.05)
    say("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
say("up")
while True:
    time.sleep(1)
"""


def test_stop_signals_a_stages_workers_together_and_what_they_need_after(tmp_path: Path) -> None:
    """Workers started back to back (no readiness check of their own) get SIGTERM together, so their shutdowns
    overlap (each Dynamo worker waits out a 5 s grace period); what has a readiness check (etcd, the frontend)
    stops alone, after every worker started after it has exited. No timing: each worker exits only once it has
    seen every worker's SIGTERM, which a one-at-a-time stop would never let happen within its grace."""
    log = tmp_path / "events.log"
    infra = Command("infra", "local", [PY, "-c", _ON_TERM, str(log), "infra", "0"], ready=Ready(1, "/"))
    workers = [Command(f"w{i}", "local", [PY, "-c", _ON_TERM, str(log), f"w{i}", "3"]) for i in range(3)]
    launcher = Launcher(tmp_path, {"local": LocalExecutor()})
    for c in (infra, *workers):
        launcher.start(_dep(infra, *workers), c)
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().count("up ") == 4):
        assert time.monotonic() < deadline, "the processes did not start"
        time.sleep(0.1)
    launcher.stop(grace=60)
    events = log.read_text().split("\n")
    assert {f"exit w{i}" for i in range(3)} <= set(events), events  # none was killed at its grace
    assert (
        max(events.index(f"exit w{i}") for i in range(3))
        < events.index("term infra")
        < events.index("exit infra")
    )
    assert Ledger(tmp_path).live() == []


def test_public_port_needs_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    cmd = Command("vllm-serve", "local", _py("pass"), secrets={"VLLM_API_KEY": API_KEY_ENV})
    with pytest.raises(ServeError, match=f"{API_KEY_ENV} is not set"):
        Launcher(tmp_path, {"local": LocalExecutor()}).launch(_dep(cmd), deadline_s=5)


def test_one_shot_failure_names_its_cause(tmp_path: Path) -> None:
    code = "import sys; print('ConnectionError: ray client: node 10.0.0.2 is dead'); sys.exit(1)"
    cmd = Command("ray-worker-worker", "local", _py(code), background=False, stop_argv=["true"])
    with Launcher(tmp_path, {"local": LocalExecutor()}) as launcher:
        with pytest.raises(ServeError) as err:
            launcher.launch(_dep(cmd), deadline_s=10)
    assert err.value.cause == "Ray node lost"


class _Pod(LocalExecutor):
    """A pod of its own (its own ledger host key) whose commands are recorded, each waiting at `barrier`."""

    def __init__(self, name: str, barrier: threading.Barrier, ran: list[tuple[str, str]]) -> None:
        super().__init__()
        self.name, self.address, self.barrier, self.ran = name, f"10.0.0.{len(ran) + 1}", barrier, ran

    def run(self, command: str, **kw: Any) -> Any:
        self.ran.append((self.name, command))
        if command.startswith("ray stop"):
            self.barrier.wait()  # breaks (BrokenBarrierError) unless the other pod's stop runs meanwhile
        return super().run("true", **kw)


def test_one_shot_stops_run_on_the_pods_side_by_side_newest_first_on_each(tmp_path: Path) -> None:
    ran: list[tuple[str, str]] = []
    barrier = threading.Barrier(2, timeout=10)
    head, worker = _Pod("head", barrier, ran), _Pod("worker", barrier, ran)
    launcher = Launcher(tmp_path, {"head": head, "worker": worker})
    for node, ex, name in (
        ("head", head, "ray-head"),
        ("worker", worker, "ray-worker"),
        ("head", head, "late"),
    ):
        stop = ["ray", "stop"] if name != "late" else ["echo", "late-stop"]
        c = Command(name, node, ["ray", "start"], background=False, stop_argv=stop)
        launcher.ledger.record(
            "serve-daemons", f"{node}:{name}", name, "local", node=node, stop=shlex.join(stop)
        )
        launcher._stops.append((c, ex, {}))
    launcher.stop()
    assert [c for n, c in ran if n == "head"] == ["echo late-stop", "ray stop"]  # newest first on one pod
    assert [c for n, c in ran if n == "worker"] == ["ray stop"]
    assert not launcher.ledger.live()
