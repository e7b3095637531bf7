"""Run the load generator next to the server (a CPU pod or the head pod) and bring its records back, so TTFT does
not include the researcher's own internet round trip.

Bench never imports the cloud layer: it needs only a `Shell` (run a command, put a file, get a file), which
`r1lab.cloud.pods` connections satisfy, as do `SSHShell` (the system ssh/scp) and `LocalShell` (a directory on
this machine: tests, dry runs). What travels: a zip of the generator (r1lab.bench plus r1lab.progress; needs
Python >= 3.11 and numpy on the far side, uvloop/orjson used when present), the request bodies built here with the
model's tokenizer, and a JSON plan. What comes back: each scenario's requests.jsonl, appended to the local one.
An API key is never sent along: the generator reads R1LAB_VLLM_API_KEY from the pod's own environment.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from r1lab.bench.shapes import Shape
from r1lab.bench.workloads import read_workload, write_workload

_PKG = Path(__file__).resolve().parent


class Shell(Protocol):
    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]: ...
    def put(self, local: Path, remote: str) -> None: ...
    def get(self, remote: str, local: Path) -> None: ...


class LocalShell:
    """A 'remote' that is a directory here (commands run with bash in it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _p(self, remote: str) -> Path:
        return self.root / remote

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        p = subprocess.run(
            ["bash", "-c", command], cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        return p.returncode, p.stdout + p.stderr

    def put(self, local: Path, remote: str) -> None:
        dst = self._p(remote)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(local).read_bytes())

    def get(self, remote: str, local: Path) -> None:
        Path(local).write_bytes(self._p(remote).read_bytes())


class SSHShell:
    """The system OpenSSH client (`ssh -p PORT -i KEY user@host`); files travel through `cat` over the same channel,
    so neither scp nor an sftp subsystem is needed on the pod. Relative paths are relative to the login dir."""

    def __init__(self, host: str, *, user: str = "root", port: int = 22, key: str | None = None,
                 options: list[str] | None = None) -> None:  # fmt: skip
        self.dest = f"{user}@{host}"
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"] + (options or [])
        if key:
            opts += ["-i", key]
        self.ssh = ["ssh", "-p", str(port), *opts, self.dest]

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        p = subprocess.run([*self.ssh, command], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr

    def put(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            p = subprocess.run([*self.ssh, f"cat > {shlex.quote(remote)}"], stdin=f, capture_output=True)
        if p.returncode:
            raise subprocess.CalledProcessError(p.returncode, f"put {remote}", stderr=p.stderr)

    def get(self, remote: str, local: Path) -> None:
        with open(local, "wb") as f:
            p = subprocess.run([*self.ssh, f"cat {shlex.quote(remote)}"], stdout=f, stderr=subprocess.PIPE)
        if p.returncode:
            raise subprocess.CalledProcessError(p.returncode, f"get {remote}", stderr=p.stderr)


class ExecutorShell:
    """Adapts an executor with `run(command, timeout=, check=) -> (code, output)`-like results and `put`/`get`
    (r1lab.execution / the pods' SSH executors) to `Shell`, without bench importing the cloud layer."""

    def __init__(self, executor: Any) -> None:
        self.ex = executor

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        res = self.ex.run(command, timeout=timeout, check=False)
        return int(res.code), str(res.output)

    def put(self, local: Path, remote: str) -> None:
        self.ex.put(Path(local), remote)

    def get(self, remote: str, local: Path) -> None:
        self.ex.get(remote, Path(local))


def build_bundle(path: Path) -> Path:
    """A zip holding the generator (r1lab/bench, r1lab/progress.py and an empty r1lab/__init__.py)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("r1lab/__init__.py", '"""r1lab load generator bundle."""\n')
        z.write(_PKG.parent / "progress.py", "r1lab/progress.py")
        for f in sorted(_PKG.glob("*.py")):
            z.write(f, f"r1lab/bench/{f.name}")
    return path


def run_remote(
    shell: Shell,
    *,
    url: str,
    points: list[dict[str, Any]],
    run_dir: str | Path,
    remote_dir: str = "r1lab-load",
    python: str = "python3",
    timeout_s: float | None = None,
) -> list[Path]:
    """Run `points` on the far side of `shell` against `url` (the server's address as seen from there).

    points: [{"scenario", "shape": Shape, "bodies": [(bytes, input_tokens)], "api", "timeout_s", "seed"}].
    Returns the local requests.jsonl files the records were appended to.
    """
    rd = Path(run_dir)
    stage = rd / "load" / ".remote"
    stage.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {"url": url, "points": []}
    files = [(build_bundle(stage / "bundle.zip"), f"{remote_dir}/bundle.zip")]
    for i, p in enumerate(points):
        bf = write_workload(stage / f"bodies-{i}.jsonl", p["bodies"])
        files.append((bf, f"{remote_dir}/bodies-{i}.jsonl"))
        plan["points"].append({"scenario": p["scenario"], "shape": asdict(p["shape"]), "api": p.get("api", "completions"),
                               "timeout_s": p.get("timeout_s", 600.0), "seed": p.get("seed", 0),
                               "bodies": f"bodies-{i}.jsonl"})  # fmt: skip
    pf = stage / "plan.json"
    pf.write_text(json.dumps(plan))
    files.append((pf, f"{remote_dir}/plan.json"))
    rc, out = shell.run(f"mkdir -p {shlex.quote(remote_dir)}")
    if rc:
        raise RuntimeError(f"remote: cannot create {remote_dir}: {out.strip()}")
    for local, remote in files:
        shell.put(local, remote)
    cmd = (f"cd {shlex.quote(remote_dir)} && R1LAB_PROGRESS=plain PYTHONPATH=bundle.zip "
           f"{shlex.quote(python)} -m r1lab.bench.remote plan.json")  # fmt: skip
    rc, out = shell.run(cmd, timeout=timeout_s)
    from r1lab.secrets import redact  # local side only (the bundle on the pod does not carry it)

    out = redact(out)
    (rd / "logs").mkdir(exist_ok=True)
    with (rd / "logs" / "loadgen-remote.log").open("a") as f:
        f.write(out)
    got = []
    for name in dict.fromkeys(p["scenario"] for p in points):
        tmp = stage / f"{name}.requests.jsonl"
        try:
            shell.get(f"{remote_dir}/load/{name}/requests.jsonl", tmp)
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
        dst = rd / "load" / name / "requests.jsonl"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with dst.open("ab") as f:  # the scenario's own append log
            f.write(tmp.read_bytes())
        got.append(dst)
        ctmp = stage / f"{name}.client.jsonl"
        try:  # the generator's own stats per point (loop lag), for the client-limited flag
            shell.get(f"{remote_dir}/load/{name}/client.jsonl", ctmp)
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
        with (dst.parent / "client.jsonl").open("ab") as f:
            f.write(ctmp.read_bytes())
    if rc:
        raise RuntimeError(f"remote load generator failed (exit {rc}); records brought back: {len(got)} "
                           f"file(s); see logs/loadgen-remote.log:\n{out[-2000:]}")  # fmt: skip
    return got


def agent(plan_path: str) -> int:
    """The far side: run every point of plan.json; records to ./load/<scenario>/requests.jsonl."""
    from r1lab.bench.loadgen import run_point

    plan = json.loads(Path(plan_path).read_text())
    for p in plan["points"]:
        bodies = read_workload(p["bodies"])
        res = run_point(plan["url"], bodies, Shape(**p["shape"]), scenario=p["scenario"],
                        out=Path("load") / p["scenario"] / "requests.jsonl", api=p["api"], timeout_s=p["timeout_s"],
                        seed=p["seed"], keep_records=False)  # fmt: skip
        print(f"{p['scenario']} {res.point}: done in {res.wall_s:.1f}s, loop lag p99 {res.loop_lag_p99_ms:.2f} ms",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(agent(sys.argv[1]))
