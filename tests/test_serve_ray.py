"""r1lab's rendered `ray start --head` runs on real Ray 2.60 inside its own PID + network namespace (so its
`ray stop` cannot touch anyone else's Ray on this shared machine): token auth on, 8 declared GPUs, the dashboard
on the pod's 127.0.0.1 only, and the launcher's stop runs `ray stop`."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from r1lab.config import load_experiment
from r1lab.execution import Background, LocalExecutor, Result
from r1lab.serve.commands import Node, Ports, render
from r1lab.serve.launch import Launcher

REPO = Path(__file__).resolve().parent.parent
RAY = str(REPO / ".venv" / "bin" / "ray")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


class NamespaceExecutor(LocalExecutor):
    """Runs commands inside the PID/mount/network namespaces of process `target` (a private 'pod')."""

    def __init__(self, target: int) -> None:
        super().__init__("nspod", "127.0.0.1")
        self.target = target

    def _wrap(self, command: str) -> str:
        return f"nsenter -t {self.target} -p -m -n -- bash -c {shlex.quote(command)}"

    def run(self, command: str, **kw) -> Result:  # type: ignore[override]
        return super().run(self._wrap(command), **kw)

    def start(self, command: str, *, log: str, env: dict[str, str] | None = None) -> Background:
        return super().start(self._wrap(command), log=log, env=env)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def pod():  # noqa: ANN201
    if os.geteuid() != 0:
        pytest.fail("needs root for namespaces (CI runs as root)")
    holder = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--net",
            "bash",
            "-c",
            "ip link set lo up; exec sleep 600",
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        child = None
        while time.monotonic() < deadline and child is None:
            out = subprocess.run(
                ["pgrep", "-P", str(holder.pid)], capture_output=True, text=True
            ).stdout.split()
            child = int(out[0]) if out else None
            time.sleep(0.1)
        assert child, "namespace holder did not start"
        # ready once bash exec'd sleep: /proc mounted, `ip link set lo up` done (a fixed wait raced both)
        while time.monotonic() < deadline and _comm(child) != "sleep":
            time.sleep(0.05)
        assert _comm(child) == "sleep", "the namespace's setup did not finish"
        yield NamespaceExecutor(child)
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()


def test_rendered_ray_head_on_real_ray(pod: NamespaceExecutor, tmp_path: Path) -> None:
    exp = load_experiment(REPO / "params" / "twin.yaml")
    nodes = [Node("head", "head", 0, "127.0.0.1", 8), Node("worker", "worker", 1, "127.0.0.2", 8)]
    dep = render(exp, "multi", nodes=nodes, ports=Ports(), remote_dir=str(tmp_path / "pod"))
    head = next(c for c in dep.commands if c.name == "ray-head")
    launcher = Launcher(tmp_path / "run", {"head": pod}, programs={"ray": RAY})
    worker = next(c for c in dep.commands if c.name == "ray-worker-worker")
    assert worker.wait_for == ["ray-gpus", "127.0.0.1:6379", "16"]  # vLLM waits for both nodes' GPUs
    head.wait_for = ["ray-gpus", "127.0.0.1:6379", "8"]  # here only the head runs
    launcher.start(dep, head)  # one-shot + wait: returns when the cluster shows 8 GPUs (ServeError otherwise)
    try:
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": launcher._ray_token or ""}
        status = pod.run(f"{RAY} status --address 127.0.0.1:6379", env=env, timeout=120, check=False)
        assert status.code == 0, status.output
        assert "0.0/8.0 GPU" in status.output  # 8 declared GPUs, as on the pod
        listen = pod.run("ss -ltnH", timeout=30).output
        dash = [ln for ln in listen.splitlines() if ln.split()[3].endswith(":8265")]
        assert dash and all(ln.split()[3] == "127.0.0.1:8265" for ln in dash), listen  # dashboard private
        denied = pod.run(f"{RAY} status --address 127.0.0.1:6379", env={"RAY_AUTH_MODE": "token",
                         "RAY_AUTH_TOKEN": "wrong-token"}, timeout=120, check=False)  # fmt: skip
        assert denied.code != 0  # token auth is on
    finally:
        launcher.stop()
    # live (not zombie: the namespace's init is `sleep`, which reaps nobody) Ray processes left after `ray stop`
    live = 'ps -eo stat=,comm= | awk \'$1 !~ /^Z/ && ($2 == "raylet" || $2 == "gcs_server")\''
    after = pod.run(live, timeout=30).output.strip()
    assert after == "", f"ray stop left: {after}"
