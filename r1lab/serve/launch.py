"""Start a rendered Deployment on its pods through Executors, wait until it serves, watch its logs, stop it.

Each background command is started detached on its node (`Executor.start`) with its log on that node
(`<run_dir>/logs/serve/<stage>/` when the node is this machine, else `<remote_dir>/logs/` on the pod, copied back
into the run dir at stop or failure). Ready = every process alive + `/health` answers 200 + (for the OpenAI
endpoint) a one-token completion succeeds, under one deadline, with progress. While waiting, the logs are scanned
for known failures (CUDA OOM, NCCL error or timeout, Ray node lost, weights missing, port in use, KV cache too
small); the first one found stops the wait with one `ServeError` naming the cause, the node and the fix.

Public interface: `Launcher(run_dir, executors, ...)`, `Launcher.launch(deployment, deadline_s) -> Endpoint`,
`Launcher.stop()`, `scan_failure(text) -> Failure | None`, `ServeError`.
"""

from __future__ import annotations

import json
import os
import re
import secrets as _secrets
import shlex
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab import teardown
from r1lab.execution import Background, Executor, LocalExecutor, Result
from r1lab.progress import progress
from r1lab.secrets import get_secret, redact
from r1lab.serve.commands import API_KEY_ENV, RAY_TOKEN_ENV, Command, Deployment


@dataclass(frozen=True)
class Failure:
    cause: str
    fix: str
    line: str


# (pattern, cause, fix): the first match in a log names the cause of a failed start.
FAILURES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"CUDA out of memory|torch\.OutOfMemoryError|CUDA error: out of memory"),
     "CUDA out of memory", "lower gpu_memory_utilization / max_num_seqs / max_num_batched_tokens, use fp8 KV, "
     "or more GPUs"),
    (re.compile(r"No available memory for the cache blocks|larger than the maximum number of tokens that can be "
                r"stored in KV cache|KV cache is needed, which is larger than the available KV cache memory"),
     "KV cache too small for max_model_len", "lower serving.max_model_len or use kv_cache_dtype fp8"),
    (re.compile(r"Watchdog caught collective operation timeout|NCCL (?:communicator )?timeout|"
                r"ProcessGroupNCCL.*[Tt]imed? ?out|NCCL_TIMEOUT"),
     "NCCL timeout", "the nodes cannot reach each other fast enough: check the private network, "
     "NCCL_SOCKET_IFNAME and firewall"),
    (re.compile(r"NCCL error|ncclInternalError|ncclSystemError|ncclUnhandledCudaError|ncclRemoteError|"
                r"NCCL WARN .*(?:[Ff]ailed|[Ee]rror)"),
     "NCCL error", "check NCCL_SOCKET_IFNAME / NCCL_IB_DISABLE for this network and that every node has the GPUs"),
    (re.compile(r"(?:[Nn]ode|Raylet) .*(?:has been marked dead|is dead|died)|NodeDiedError|RayNodeLost|"
                r"Ray cluster .*(?:lost|no longer)|ActorDiedError.*node"),
     "Ray node lost", "a Ray node left the cluster: check the worker pod is running and reachable (ray status)"),
    (re.compile(r"Cannot find any model weights|No model weights found|does not appear to have a file named|"
                r"not a local folder and is not a valid model identifier|Repository Not Found|"
                r"No such file or directory: .*(?:config\.json|\.safetensors|tokenizer)|"
                r"(?:Invalid|invalid) repository ID or local directory"),
     "model weights missing", "download the weights onto the volume first (01_environment / `r1lab download`) "
     "and check model.path"),
    (re.compile(r"[Aa]ddress already in use|EADDRINUSE|Errno 98"),
     "port in use", "another server holds the port: stop it (r1lab teardown) or change serving.port/dynamo.port"),
]  # fmt: skip


def scan_failure(text: str) -> Failure | None:
    """The first known failure in a log text, or None."""
    for line in text.splitlines():
        for pattern, cause, fix in FAILURES:
            if pattern.search(line):
                return Failure(cause, fix, line.strip()[:300])
    return None


class ServeError(RuntimeError):
    """A deployment failed to start or serve: one line naming the cause, node and fix; log tail attached."""

    def __init__(
        self,
        cause: str,
        node: str,
        command: str,
        detail: str = "",
        fix: str = "",
        log: str = "",
        tail: str = "",
    ) -> None:
        self.cause, self.node, self.command, self.detail, self.fix, self.log = (
            cause,
            node,
            command,
            detail,
            fix,
            log,
        )
        self.tail = redact(tail)[-3000:]
        msg = f"{command} on {node}: {cause}"
        if detail:
            msg += f" ({redact(detail)})"
        if fix:
            msg += f"; fix: {fix}"
        if log:
            msg += f" [log: {log}]"
        super().__init__(msg)


@dataclass
class Endpoint:
    """Where a ready deployment answers (from this machine) and what to send it."""

    url: str  # OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None  # held in memory only, never written
    stage: str = ""
    engine: str = ""

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


@dataclass
class Running:
    command: Command
    executor: Executor
    bg: Background | None
    log: str  # on the node
    local_log: Path


# a one-shot's command, its pod, its environment: how to undo it
_Stop = tuple[Command, Executor, dict[str, str]]
_REGISTRY: dict[str, Executor] = {}  # ledger host key -> executor, for teardown in this process


def _host_key(ex: Executor) -> str:
    return f"{ex.name}@{ex.address}"


def stop_pod_process(entry: dict[str, Any], run_dir: Path) -> None:
    """Teardown handler for a process on a pod: stop it through the run's live connection to that pod. Without one
    (another process), the process ends when the pod is terminated, which the pod's own ledger entry covers."""
    ex = _REGISTRY.get(entry["meta"].get("host", ""))
    if ex is not None:
        ex.stop(int(entry["meta"]["pid"]), grace=10)


def run_stop_command(entry: dict[str, Any], run_dir: Path) -> None:
    """Teardown handler for daemons a one-shot command started (Ray): run its stop command on that node."""
    meta = entry["meta"]
    ex = _REGISTRY.get(meta.get("host", ""))
    if ex is not None:
        ex.run(meta["stop"], env=meta.get("env") or None, timeout=120, check=False)
    elif meta.get("host", "").startswith("local@"):
        LocalExecutor().run(meta["stop"], env=meta.get("env") or None, timeout=120, check=False)


teardown.register("pod-process", "r1lab.serve.launch:stop_pod_process")
teardown.register("serve-daemons", "r1lab.serve.launch:run_stop_command")


# One-shot failures that are transient on a loaded machine, by program: `ray start` waits a fixed 30 s (not
# configurable, ray/_private/node.py) for its raylet to register with the GCS and gives up with this message when
# a busy machine makes it slower, leaving GCS and raylet running: the launcher then waits (RAY_LATE_S) for the node
# to register, else restarts it after `ray stop`; a failure with any other message is never waited for or retried.
TRANSIENT_ONE_SHOT = {"ray": ("The current node timed out during startup",)}
TRANSIENT_WHY = "Ray's fixed 30 s wait for its raylet to register ran out (a loaded machine)"
ONE_SHOT_ATTEMPTS = 3
# While waiting for readiness, every process's liveness and log are checked every third poll (on pods two SSH
# commands per process: ten a second for 04's real engine, CPU taken from the engines starting on the same cores);
# the endpoint itself is polled every time.
CHECK_EVERY_POLLS = 3
RAY_LATE_S = 90.0  # after Ray's 30 s: how long its still-running raylet may take to register before a restart
RAY_POLL_S = 0.5  # between `ray status` polls until every node's GPUs show (a poll: ~1 s of CPU)


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _ray_address(argv: list[str]) -> str | None:
    """The GCS address a `ray start` argv joins (a worker's --address) or opens (the head's IP and --port)."""
    if "--head" in argv:
        ip, port = _opt(argv, "--node-ip-address"), _opt(argv, "--port") or "6379"
        return f"{ip}:{port}" if ip else None
    return _opt(argv, "--address")


def _num_gpus(argv: list[str]) -> float:
    return float(_opt(argv, "--num-gpus") or 0)


def stop_waves(running: list[Running]) -> list[list[Running]]:
    """The started background processes, newest first, in the waves `Launcher.stop` stops them in: a run of
    processes the launch started back to back with no readiness check of their own (a stage's engine workers, which
    depend only on what started before them) stops together; a process with a readiness check (etcd, the frontend:
    what later ones register with or are reached through) stops alone, after everything started after it."""
    waves: list[list[Running]] = []
    run: list[Running] = []
    for r in reversed(running):
        if r.bg is None:
            continue
        if r.command.ready is None:
            run.append(r)
            continue
        if run:
            waves.append(run)
            run = []
        waves.append([r])
    if run:
        waves.append(run)
    return waves


class Launcher:
    """Starts deployments on pods; `stop()` (or the run's teardown) stops everything it started."""

    def __init__(
        self,
        run_dir: Path | str,
        executors: dict[str, Executor],
        *,
        remote_dir: str = "/tmp/r1lab",
        programs: dict[str, str] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        """executors: node name (`head`, `worker`...) -> Executor on that pod. programs: replace argv[0] (e.g.
        {"vllm": ".venv-vllm/bin/vllm"}) where the engines are not on PATH (local tests)."""
        self.run_dir = Path(run_dir)
        self.executors = executors
        self.remote_dir = remote_dir.rstrip("/")
        self.programs = programs or {}
        self.poll_s = poll_s
        self.running: list[Running] = []
        self._stops: list[_Stop] = []
        self._exit = ExitStack()
        self._ray_token: str | None = None
        self.ledger = teardown.Ledger(self.run_dir)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _ex(self, node: str) -> Executor:
        if node not in self.executors:
            raise ServeError(
                "no connection to that pod", node, "launch", fix=f"pass an executor for {node!r}"
            )
        return self.executors[node]

    def _argv(self, c: Command) -> list[str]:
        argv = list(c.argv)
        if argv[0] == "python" and "python" in self.programs:
            argv[0] = self.programs["python"]
        elif argv[0] in self.programs:
            argv[0] = self.programs[argv[0]]
        return argv

    def _secret_env(self, c: Command) -> dict[str, str]:
        out = {}
        for target, source in c.secrets.items():
            if source == RAY_TOKEN_ENV:
                self._ray_token = self._ray_token or get_secret(RAY_TOKEN_ENV) or _secrets.token_hex(24)
                out[target] = self._ray_token
                continue
            value = get_secret(source)
            if value is None:
                hint = (
                    " (the serving port is public on RunPod: vLLM must require an API key)"
                    if source == API_KEY_ENV
                    else ""
                )
                raise ServeError(
                    f"environment variable {source} is not set{hint}",
                    c.node,
                    c.name,
                    fix=f"export {source}=<a long random string> before launching",
                )
            out[target] = value
        return out

    def _log_paths(self, stage: str, c: Command, ex: Executor) -> tuple[str, Path]:
        local = self.run_dir / "logs" / "serve" / stage / f"{c.name}.log"
        local.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(ex, LocalExecutor):
            return str(local), local
        return f"{self.remote_dir}/logs/{stage}/{c.name}.log", local

    def _read_log(self, r: Running, max_bytes: int = 200_000) -> str:
        if isinstance(r.executor, LocalExecutor):
            try:
                with open(r.log, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - max_bytes))
                    return f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return ""
        res = r.executor.run(f"tail -c {max_bytes} {shlex.quote(r.log)} 2>/dev/null", timeout=30, check=False)
        return res.output

    def _fetch_logs(self) -> None:
        for r in self.running:
            if isinstance(r.executor, LocalExecutor):
                continue
            try:
                r.local_log.write_text(redact(self._read_log(r, 5_000_000)), encoding="utf-8")
            except Exception:  # noqa: BLE001 - best effort: the pod may be gone already
                pass

    def _fail(self, r: Running, cause: str, fix: str, detail: str = "") -> ServeError:
        self._fetch_logs()
        tail = self._read_log(r, 20_000)
        return ServeError(cause, r.command.node, r.command.name, detail, fix, str(r.local_log), tail)

    # -- start --------------------------------------------------------------------------------------------
    def start(self, dep: Deployment, c: Command) -> Running | None:
        ex = self._ex(c.node)
        _REGISTRY[_host_key(ex)] = ex
        env = {**c.env, **self._secret_env(c)}
        for src, remote in c.uploads:
            if Path(src).resolve() == Path(remote).resolve():
                continue
            ex.run(f"mkdir -p {shlex.quote(str(Path(remote).parent))}", timeout=60)
            ex.put(Path(src), remote)
        for line in c.pre:
            ex.run(line, timeout=60)
        argv = self._argv(c)
        command = shlex.join(argv)
        log, local = self._log_paths(dep.stage, c, ex)
        if not c.background:  # one-shot (ray start): run to completion, remember how to undo it
            stop = (
                shlex.join([self.programs.get(c.stop_argv[0], c.stop_argv[0]), *c.stop_argv[1:]])
                if c.stop_argv
                else ""
            )
            if c.stop_argv:  # recorded before it runs: a kill during `ray start` still gets its `ray stop`
                self._stops.append((c, ex, env))
                self.ledger.record(
                    "serve-daemons",
                    f"{c.node}:{c.name}",
                    f"{dep.experiment}-{c.name}",
                    _provider(ex),
                    host=_host_key(ex),
                    node=c.node,
                    stop=stop,
                    env={k: v for k, v in c.env.items()},
                )
            res = self._one_shot(c, ex, command, env, local, stop)
            if res.code == 0 and c.wait_for:
                self._wait_for(c, ex, env, local)
            if res.code != 0:
                found = scan_failure(res.output)
                raise ServeError(
                    found.cause if found else f"exited {res.code}",
                    c.node,
                    c.name,
                    found.line if found else _last_line(res.output),
                    found.fix if found else "",
                    str(local),
                    res.output,
                )
            return None
        bg = ex.start(command, log=log, env=env)
        if isinstance(ex, LocalExecutor):
            self.ledger.record(
                "local-process",
                str(bg.pid),
                f"{dep.experiment}-{c.name}",
                "local",
                pid=bg.pid,
                pgid=bg.pid,
                command=redact(command),
                log=log,
            )
        else:
            self.ledger.record(
                "pod-process",
                f"{c.node}:{bg.pid}",
                f"{dep.experiment}-{c.name}",
                _provider(ex),
                host=_host_key(ex),
                node=c.node,
                pid=bg.pid,
                log=log,
            )
        r = Running(c, ex, bg, log, local)
        self.running.append(r)
        return r

    def _one_shot(
        self, c: Command, ex: Executor, command: str, env: dict[str, str], local: Path, stop: str
    ) -> Any:
        """Run a one-shot command; on a failure known to be transient on a loaded machine (TRANSIENT_ONE_SHOT) wait
        for the late registration, else retry it (after its stop command), at most ONE_SHOT_ATTEMPTS times. Every attempt's output is logged and
        each retry is said; any other failure, or the last attempt's, is returned as it is."""
        transient = TRANSIENT_ONE_SHOT.get(c.argv[0], ())
        local.write_text("", encoding="utf-8")
        for attempt in range(1, ONE_SHOT_ATTEMPTS + 1):
            res = ex.run(command, env=env, timeout=300, check=False)
            with open(local, "a", encoding="utf-8") as f:
                f.write(f"# attempt {attempt}\n" if attempt > 1 else "")
                f.write(redact(res.output) + "\n")
            why = next((t for t in transient if t in res.output), None)
            if res.code == 0 or why is None or not stop:
                return res
            # `ray start` gave up waiting but left its GCS and raylet running: the node may yet register
            late = self._registered_late(c, ex, env, local)
            if late is not None:
                return Result(0, res.output + "\n" + late)
            if attempt == ONE_SHOT_ATTEMPTS:
                return res
            print(
                f"{c.node}: {c.name}: {why!r} (attempt {attempt}/{ONE_SHOT_ATTEMPTS}): {TRANSIENT_WHY}; "
                f"`{stop}` and again",
                flush=True,
            )
            stopped = ex.run(stop, env=env, timeout=120, check=False)
            with open(local, "a", encoding="utf-8") as f:
                f.write(f"# {stop} (exit {stopped.code})\n{redact(stopped.output)}\n")
            time.sleep(2.0 * attempt)
        return res

    def _registered_late(
        self, c: Command, ex: Executor, env: dict[str, str], log: Path, timeout: float | None = None
    ) -> str | None:
        """After Ray's own wait ran out: poll `ray status` until the cluster shows every GPU the Ray nodes started
        so far declare (this one's included); the line saying so, or None when it does not within `timeout`."""
        timeout = RAY_LATE_S if timeout is None else timeout
        address = _ray_address(c.argv)
        want = sum(_num_gpus(x.argv) for x, _, _ in self._stops if x.argv[0] == "ray")
        if address is None or not want:
            return None
        ray = self.programs.get("ray", "ray")
        probe = f"{shlex.quote(ray)} status --address {shlex.quote(address)} 2>&1"
        t0 = time.monotonic()
        out = ""
        while time.monotonic() - t0 < timeout:
            out = ex.run(probe, env=env, timeout=60, check=False).output
            m = re.search(r"([\d.]+)/([\d.]+) GPU", out)
            if m and float(m.group(2)) >= want:
                line = (
                    f"{c.node}: {c.name}: the node registered {time.monotonic() - t0:.0f} s after Ray gave up"
                )
                print(line + f" ({m.group(0)} in the cluster)", flush=True)
                with open(log, "a", encoding="utf-8") as f:
                    f.write(f"# {line}\n{redact(out)}\n")
                return line
            time.sleep(3.0)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"# not registered {timeout:.0f} s after Ray gave up:\n{redact(out)}\n")
        return None

    def _wait_for(
        self, c: Command, ex: Executor, env: dict[str, str], log: Path, timeout: float = 180.0
    ) -> None:
        """Poll a one-shot's readiness check on its node (`ray-gpus ADDR N`: the Ray cluster shows N GPUs)."""
        kind, *args = c.wait_for or [""]
        if kind != "ray-gpus":
            raise ServeError(f"unknown readiness check {kind!r}", c.node, c.name)
        address, gpus = args
        ray = self.programs.get("ray", "ray")
        probe = f"{shlex.quote(ray)} status --address {shlex.quote(address)} 2>&1"
        deadline = time.monotonic() + timeout
        out = ""
        with progress(
            f"{c.name}: waiting for {gpus} GPUs in the Ray cluster", total=round(timeout), unit="s"
        ) as p:
            while time.monotonic() < deadline:
                out = ex.run(probe, env=env, timeout=60, check=False).output
                m = re.search(r"([\d.]+)/([\d.]+) GPU", out)
                if m and float(m.group(2)) >= float(gpus):
                    return
                found = scan_failure(out)
                if found:
                    break
                time.sleep(RAY_POLL_S)
                p.advance(RAY_POLL_S)
        with open(log, "a", encoding="utf-8") as f:
            f.write(redact(out))
        found = scan_failure(out)
        raise ServeError(
            found.cause if found else f"the Ray cluster did not reach {gpus} GPUs in {timeout:.0f} s",
            c.node,
            c.name,
            _last_line(out),
            found.fix if found else "check every `ray start` log and that the pods reach each other",
            str(log),
            out,
        )

    def launch(self, dep: Deployment, deadline_s: float = 1800.0) -> Endpoint:
        """Start every runnable command in order and wait until the deployment serves; raise ServeError."""
        deadline = time.monotonic() + deadline_s
        endpoint: Endpoint | None = None
        final: list[Running] = []
        try:
            for c in dep.to_run:
                r = self.start(dep, c)
                if r is None or c.ready is None:
                    continue
                if c.ready.completion:
                    final.append(r)  # the OpenAI endpoint answers once its workers are up: checked last
                else:
                    self._wait_ready(dep, r, deadline, deadline_s)
            for r in final:
                url = self._wait_ready(dep, r, deadline, deadline_s)
                ready = r.command.ready  # set: only commands with a readiness check are in `final`
                if (
                    r.command.node == dep.endpoint_node
                    and ready is not None
                    and ready.port == dep.endpoint_port
                ):
                    key = get_secret(API_KEY_ENV) if "VLLM_API_KEY" in r.command.secrets else None
                    endpoint = Endpoint(url + "/v1", dep.served_name, key, dep.stage, dep.engine)
        except BaseException:
            self._fetch_logs()
            raise
        if endpoint is None:
            raise ServeError("no command serves the deployment's endpoint", dep.endpoint_node, dep.stage)
        return endpoint

    def _url(self, r: Running) -> str:
        ready = r.command.ready
        assert ready is not None  # only commands with a readiness check are waited on by URL
        port = ready.port
        host = "127.0.0.1" if r.command.name != "etcd" else _etcd_host(r.command)
        if isinstance(r.executor, LocalExecutor):
            return f"http://{host}:{port}"
        local_port = self._exit.enter_context(r.executor.forward(port, host))
        return f"http://127.0.0.1:{local_port}"

    def _wait_ready(self, dep: Deployment, r: Running, deadline: float, total: float) -> str:
        ready = r.command.ready
        assert ready is not None
        url = self._url(r)
        key = get_secret(API_KEY_ENV) if "VLLM_API_KEY" in r.command.secrets else None
        stage = "health"
        missing = ""
        start = time.monotonic()
        with progress(
            f"{r.command.name} on {r.command.node}: waiting for /health", total=round(total), unit="s"
        ) as p:
            last = start
            polls = 0
            while True:
                if polls % CHECK_EVERY_POLLS == 0:
                    self.check()
                polls += 1
                if stage == "health" and _get_ok(url + ready.path):
                    stage = "workers" if ready.instances else "completion"
                    if stage == "workers":
                        p.set_description(f"{r.command.name} on {r.command.node}: waiting for every worker")
                if stage == "workers":
                    missing = missing_instances(url + ready.path, dict(ready.instances))
                    if not missing:
                        stage = "completion"
                if stage == "completion":
                    if not ready.completion:
                        return url
                    p.set_description(f"{r.command.name} on {r.command.node}: one-token completion")
                if stage == "completion":
                    ok, detail = one_token_completion(url + "/v1", dep.served_name, key)
                    if ok:
                        return url
                    if "401" in detail or "403" in detail:
                        raise self._fail(
                            r, "the endpoint refused our API key", f"check {API_KEY_ENV}", detail
                        )
                now = time.monotonic()
                if now > deadline:
                    self.check()  # a process that failed names the cause, not the deadline
                    if stage == "workers":
                        raise self._fail(
                            r,
                            f"not ready after {total:.0f} s: the frontend lists {missing}",
                            "a worker did not register: read its log (wrong discovery, etcd/NATS "
                            "unreachable, or it failed to start)",
                        )
                    raise self._fail(
                        r,
                        f"not ready after {total:.0f} s (stuck at {stage})",
                        "read the log; raise the deadline for large models (weights load minutes)",
                    )
                p.advance(now - last)
                last = now
                time.sleep(self.poll_s)

    def check(self) -> None:
        """Raise ServeError naming the first started process that exited or logged a known failure (its log
        tail attached); return when all are well. Polled while waiting for readiness, and called by those whose
        request to the deployment failed."""
        for r in self.running:
            text = self._read_log(r, 100_000)
            found = scan_failure(text)
            if found:
                raise self._fail(r, found.cause, found.fix, found.line)
            if r.bg is not None and not r.executor.alive(r.bg.pid):
                raise self._fail(r, "process exited", "read the log", _last_line(text))

    # -- stop ---------------------------------------------------------------------------------------------
    def stop(self, grace: float = 15.0) -> None:
        """Stop every process started (newest first, in `stop_waves`; SIGTERM then SIGKILL), then `ray stop` where
        Ray was started; copy remote logs into the run dir; record each as deleted in the ledger. Keeps going past a
        failure (recorded as teardown_failed, the run's teardown retries it) and raises one error at the end."""
        self._fetch_logs()
        failed: list[str] = []

        def stop_one(r: Running) -> Exception | None:
            assert r.bg is not None  # only started processes are in the waves
            try:
                r.executor.stop(r.bg.pid, grace=grace)
            except Exception as exc:  # noqa: BLE001 - every process gets its turn
                return exc
            return None

        for wave in stop_waves(self.running):
            # a wave's processes stop at once: each dynamo worker waits out its grace period (5 s) on SIGTERM
            with ThreadPoolExecutor(len(wave)) as pool:
                outcomes = list(pool.map(stop_one, wave))
            for r, exc in zip(wave, outcomes, strict=True):
                assert r.bg is not None
                kind, rid = (
                    ("local-process", str(r.bg.pid))
                    if isinstance(r.executor, LocalExecutor)
                    else ("pod-process", f"{r.command.node}:{r.bg.pid}")
                )
                if exc is not None:
                    self.ledger.failed(kind, rid, f"{type(exc).__name__}: {exc}")
                    failed.append(f"{r.command.name} on {r.command.node}: {exc}")
                else:
                    self.ledger.deleted(kind, rid)
        # `ray stop` & co.: newest first on each pod, the pods side by side (03: the worker's and the head's `ray
        # stop`, 1.3 + 2.4 s one after the other)
        by_host: dict[str, list[_Stop]] = {}
        for item in reversed(self._stops):
            by_host.setdefault(_host_key(item[1]), []).append(item)

        def stop_host(items: list[_Stop]) -> list[tuple[Command, str, Exception | None]]:
            done: list[tuple[Command, str, Exception | None]] = []
            for c, ex, env in items:
                assert c.stop_argv is not None  # only commands with a stop_argv are in _stops
                stop = shlex.join([self.programs.get(c.stop_argv[0], c.stop_argv[0]), *c.stop_argv[1:]])
                try:
                    ex.run(stop, env=env, timeout=120, check=True)
                except Exception as exc:  # noqa: BLE001 - every stop gets its turn
                    done.append((c, stop, exc))
                    continue
                done.append((c, stop, None))
            return done

        if by_host:
            with ThreadPoolExecutor(len(by_host)) as pool:
                stopped = [x for outcome in pool.map(stop_host, by_host.values()) for x in outcome]
        else:
            stopped = []
        for c, stop, exc in stopped:
            if exc is not None:
                self.ledger.failed("serve-daemons", f"{c.node}:{c.name}", f"{type(exc).__name__}: {exc}")
                failed.append(f"{stop} on {c.node}: {exc}")
                continue
            self.ledger.deleted("serve-daemons", f"{c.node}:{c.name}")
        self.running.clear()
        self._stops.clear()
        self._exit.close()
        if failed:
            raise ServeError(
                "stop failed",
                "pods",
                "stop",
                "; ".join(failed)[:500],
                "the run's teardown retries; pod termination ends what is left",
            )

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _provider(ex: Executor) -> str:
    return "local" if isinstance(ex, LocalExecutor) else str(getattr(ex, "provider", "runpod"))


def _etcd_host(c: Command) -> str:
    i = c.argv.index("--listen-client-urls")
    return c.argv[i + 1].split("//", 1)[1].rsplit(":", 1)[0]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def _get_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def missing_instances(health_url: str, want: dict[str, int], timeout: float = 5.0) -> str:
    """'' when a Dynamo frontend's /health lists at least `want[component]` distinct `generate` instances per
    component; else what is missing, e.g. 'backend 0/1, prefill 1/1'."""
    try:
        with urllib.request.urlopen(health_url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"no /health answer ({type(exc).__name__})"
    have: dict[str, set[Any]] = {}
    for inst in data.get("instances") or []:
        if inst.get("endpoint") == "generate":
            have.setdefault(str(inst.get("component")), set()).add(inst.get("instance_id"))
    counts = {c: len(have.get(c, ())) for c in want}
    if all(counts[c] >= n for c, n in want.items()):
        return ""
    return ", ".join(f"{c} {counts[c]}/{n}" for c, n in sorted(want.items()))


def one_token_completion(
    base_url: str, model: str, api_key: str | None, timeout: float = 60.0
) -> tuple[bool, str]:
    """POST /v1/completions with max_tokens 1; (ok, detail)."""
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(base_url + "/completions", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read()[:200]!r}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    ok = bool(data.get("choices")) and (data.get("usage") or {}).get("completion_tokens", 1) >= 1
    return ok, "" if ok else f"unexpected answer: {str(data)[:200]}"


@dataclass
class Launched:
    """What a notebook keeps of a launch: the endpoint and the launcher that can stop it."""

    endpoint: Endpoint
    launcher: Launcher
    deployment: Deployment
    extra: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """What goes into the run's state.json for later notebooks (no secrets: the key stays in the env)."""
        e = self.endpoint
        return {
            "url": e.url,
            "model": e.model,
            "stage": e.stage,
            "engine": e.engine,
            "api_key_env": API_KEY_ENV if e.api_key else None,
            "topology": self.deployment.topology,
        }
