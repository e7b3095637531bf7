"""Preflight: every pod checked before anything costly (the weights download in 01, serving in 02-04).

Over the same SSH executors every layer uses, on RunPod and on the twin alike, `run_preflight` checks:
- each binary and Python module the stage's rendered commands need, with versions against the pins of the pod's
  `setup` lines (else the project's own pins);
- GPUs: type, count and driver from nvidia-smi (on the twin the declared type and count, labelled declared);
- /dev/shm (RunPod's Ray/vLLM guide: >= 8 GB; the container default is 64 MB) and MALLOC_ARENA_MAX=1 in the
  Ray/vLLM commands;
- the volume: free space against the weights (01), the weights present (02-04);
- the interface that holds the pod's private address;
- between serving pods: every TCP port the plan uses (Ray, torch.distributed, NIXL side channel, Dynamo's
  system/bootstrap ports, etcd, NATS, and a sample of the ephemeral range NCCL/Gloo/Ray workers use), the link's
  bandwidth and round trip (a bounded 1.5 s transfer) against what the plan assumed, and the clock offset.
The result is one table (`preflight-<stage>.json` in the run dir, `table(ctx, stage)` in notebooks); the first
failure raises `PreflightError`, one line naming pod, check and fix. It takes seconds, well under a minute.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from r1lab.config import Experiment
from r1lab.execution import Executor
from r1lab.pins import setup_pins

PROBE = Path(__file__).with_name("probe.py")
PREFIX = "@r1lab "
SHM_MIN_BYTES = 8 * 10**9  # RunPod's Ray/vLLM guide: >= 8 GB
MIN_DRIVER = (525, 60)  # CUDA 12.x minor-version compatibility floor
PROJECT_PINS = {"ray": "2.60.0", "ai-dynamo": "1.6.1", "ai-dynamo-runtime": "1.6.1"}  # pyproject / bootstrap
EPHEMERAL_SAMPLE = 40123  # inside Linux's ephemeral range (32768-60999), where NCCL/Gloo/Ray workers listen
LINK_PORT = 39123  # the link probe's own port (round trip, clock, bandwidth)
CLOCK_FAIL_S, CLOCK_WARN_S = 2.0, 0.1
_DISTS = {"dynamo": ("ai-dynamo", "ai-dynamo-runtime"), "vllm": ("vllm",), "ray": ("ray",)}
_VERSION_ARGV = {"etcd": ["etcd", "--version"], "nats-server": ["nats-server", "--version"]}


@dataclass
class Check:
    """One row of the preflight table."""

    pod: str
    check: str
    expected: str
    found: str
    status: str  # ok | warn | fail
    fix: str = ""
    source: str = "measured"  # measured | declared (twin) | rendered


class PreflightError(RuntimeError):
    """The first failed check: names pod, check, what was found and the fix."""

    def __init__(self, stage: str, check: Check) -> None:
        self.stage, self.check = stage, check
        super().__init__(
            f"preflight ({stage}) failed on pod {check.pod}: {check.check}: found {check.found}, expected "
            f"{check.expected}; fix: {check.fix}"
        )


@dataclass
class Preflight:
    stage: str
    checks: list[Check]
    seconds: float
    notes: list[str] = field(default_factory=list)
    volume_read_bps: float | None = None  # measured on the weights (serving stages)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.checks]

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": round(self.seconds, 2), "notes": self.notes,
                "volume_read_bps": self.volume_read_bps, "checks": self.rows()}  # fmt: skip

    def raise_for_failure(self) -> None:
        if self.failures:
            raise PreflightError(self.stage, self.failures[0])


# --- what the stage needs ----------------------------------------------------------------------------------


@dataclass
class Needs:
    """What one pod must have for a stage: binaries, Python modules, distributions, ports it listens on."""

    binaries: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    dists: set[str] = field(default_factory=set)
    ports: dict[int, str] = field(default_factory=dict)  # port -> what listens there
    malloc: dict[str, str | None] = field(default_factory=dict)  # Ray/vLLM command -> its MALLOC_ARENA_MAX


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def stage_needs(dep: Any) -> dict[str, Needs]:
    """Per node of a rendered `r1lab.serve.commands.Deployment`: what its commands need. Binaries and modules
    come from the commands that run here; ports and MALLOC_ARENA_MAX from every rendered command (the network
    path and the environment are the same whether the twin's mocker or vLLM answers)."""
    out: dict[str, Needs] = {}
    for c in dep.commands:
        n = out.setdefault(c.node, Needs())
        argv = c.argv
        if c.run:
            if argv[0] in ("python", "python3") and len(argv) > 2 and argv[1] == "-m":
                n.binaries.add(argv[0])
                n.modules.add(argv[2])
                n.dists.update(_DISTS.get(argv[2].split(".")[0], ()))
            else:
                n.binaries.add(argv[0])
                n.dists.update(_DISTS.get(argv[0], ()))
            if c.stop_argv:
                n.binaries.add(c.stop_argv[0])
        is_engine = argv[0] in ("ray", "vllm") or "dynamo.vllm" in argv
        if is_engine:
            n.malloc[c.name] = c.env.get("MALLOC_ARENA_MAX")
        if c.name == "ray-head":
            n.ports[int(_flag(argv, "--port") or 6379)] = "Ray GCS"
        if c.name == "etcd":
            url = _flag(argv, "--listen-client-urls") or ""
            n.ports[int(url.rsplit(":", 1)[-1])] = "etcd (Dynamo discovery)"
        if c.name == "nats":
            n.ports[int(_flag(argv, "-p") or 4222)] = "NATS (Dynamo event plane)"
        for flag, what in (
            ("--master-port", "torch.distributed master"),
            ("--data-parallel-rpc-port", "vLLM DP RPC"),
        ):
            if _flag(argv, flag) and c.node == dep.endpoint_node:
                n.ports[int(_flag(argv, flag) or 0)] = what
        for var, what in (("VLLM_NIXL_SIDE_CHANNEL_PORT", "NIXL side channel"), ("DYN_SYSTEM_PORT", "Dynamo system"),
                          ("DYN_TCP_RPC_PORT", "Dynamo TCP request plane"),
                          ("DYN_TCP_RESPONSE_STREAM_PORT", "Dynamo TCP response stream")):  # fmt: skip
            if c.env.get(var):
                n.ports[int(c.env[var])] = f"{what} ({c.name})"
        if _flag(argv, "--bootstrap-ports"):
            for p in (_flag(argv, "--bootstrap-ports") or "").split(","):
                n.ports[int(p)] = f"P/D bootstrap ({c.name})"
    if len(out) > 1:
        for n in out.values():
            n.ports.setdefault(EPHEMERAL_SAMPLE, "ephemeral range sample (NCCL/Gloo sockets, Ray workers)")
    return out


# --- running the probe --------------------------------------------------------------------------------------


def _probe_command(mode: str, cfg: dict[str, Any]) -> str:
    blob = base64.b64encode(zlib.compress(PROBE.read_bytes(), 9)).decode()
    boot = "import base64,zlib,sys;s=sys.argv.pop(1);exec(zlib.decompress(base64.b64decode(s)))"
    py = "$(command -v python3 || command -v python || echo python3)"
    return f'"{py}" -c {shlex.quote(boot)} {blob} {mode} {shlex.quote(json.dumps(cfg))}'


def _parse(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX) :])
    return None


def _facts(ex: Executor, cfg: dict[str, Any]) -> tuple[dict[str, Any] | None, float, float, str]:
    t0 = time.time()
    res = ex.run(_probe_command("facts", cfg), timeout=45, check=False)
    t1 = time.time()
    return _parse(res.output), t0, t1, res.output[-500:]


# --- judging ------------------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _binary_fix(binary: str, role: str) -> str:
    if binary in ("etcd", "nats-server"):
        return (
            f"add `apt-get install -y etcd-server nats-server` to pods[{role}].setup (Dynamo's discovery and event "
            "plane run on the head across pods)"
        )
    if binary == "ray":
        return f"add `pip install 'ray[default]==2.60.0'` to pods[{role}].setup"
    if binary == "vllm":
        return f"add `pip install vllm==<version>` to pods[{role}].setup"
    if binary in ("python", "python3"):
        return f"use an image with Python (pods[{role}].image), e.g. runpod/pytorch"
    return f"install {binary} in pods[{role}].setup"


def _driver_ok(driver: str | None) -> bool:
    nums = [int(x) for x in re.findall(r"\d+", driver or "")[:2]]
    return len(nums) >= 1 and tuple(nums + [0])[:2] >= MIN_DRIVER


def judge_pod(
    pod: str,
    role: str,
    facts: dict[str, Any] | None,
    raw: str,
    *,
    exp: Experiment,
    needs: Needs | None,
    gpu_type: str | None,
    gpu_count: int,
    setup: list[str],
    volume: str,
    weights_bytes: float | None,
    weights_file: str | None,
    clock_local: tuple[float, float] | None = None,
) -> list[Check]:
    """The per-pod rows from one `facts` probe."""
    if facts is None:
        return [Check(pod, "probe", "python3 on the pod runs the preflight probe", raw.strip()[-200:] or "no output",
                      "fail", f"use an image with Python 3 (pods[{role}].image)")]  # fmt: skip
    rows: list[Check] = []
    pins = {**PROJECT_PINS, **setup_pins(setup)}
    needs = needs or Needs()
    for b in sorted(needs.binaries):
        path = facts["binaries"].get(b)
        ver = facts.get("bin_versions", {}).get(b)
        rows.append(Check(pod, f"binary {b}", "on PATH", f"{path}" + (f" ({ver})" if ver else "") if path else
                          "not found on PATH", "ok" if path else "fail", "" if path else _binary_fix(b, role)))  # fmt: skip
    for m in sorted(needs.modules):
        ok = facts["modules"].get(m)
        dist = _DISTS.get(m.split(".")[0], (m,))[0]
        rows.append(Check(pod, f"module {m}", f"importable by {facts.get('python_path') or 'python'}",
                          "found" if ok else "not found", "ok" if ok else "fail",
                          "" if ok else f"install {dist}{'==' + pins[dist] if dist in pins else ''} in pods[{role}].setup"))  # fmt: skip
    for d in sorted(needs.dists):
        have, want = facts["dists"].get(d), pins.get(d)
        if have is None:
            if any(r.status == "fail" and d in r.fix for r in rows):
                continue
            rows.append(Check(pod, f"version {d}", want or "installed", "not installed", "fail",
                              f"pip install {d}{'==' + want if want else ''} in pods[{role}].setup"))  # fmt: skip
            continue
        ok = want is None or have.split("+")[0] == want
        rows.append(Check(pod, f"version {d}", f"=={want}" if want else "(not pinned)", have,
                          "ok" if ok else "fail", "" if ok else f"pin {d}=={want} in pods[{role}].setup (or change the pin)"))  # fmt: skip
    if gpu_count:
        g = facts.get("gpu") or {}
        names = g.get("names") or []
        if g.get("source") == "declared":
            found = f"{len(names)} x {names[0] if names else '?'}"
            ok = len(names) == gpu_count and all(n == gpu_type for n in names)
            rows.append(Check(pod, "GPUs", f"{gpu_count} x {gpu_type}", found, "ok" if ok else "fail",
                              "" if ok else "the twin declares the params' GPUs: recreate the pod",
                              "declared (twin)"))  # fmt: skip
            rows.append(Check(pod, "GPU driver", f">= {MIN_DRIVER[0]}.{MIN_DRIVER[1]} (CUDA 12)", "none: the twin "
                              "has no GPUs or nvidia-smi", "ok", "", "declared (twin)"))  # fmt: skip
        elif g.get("source") == "nvidia-smi" and not g.get("error"):
            found = f"{len(names)} x {names[0] if names else '?'}"
            ok = len(names) == gpu_count and all(gpu_type and n.lower() == gpu_type.lower() for n in names)
            rows.append(Check(pod, "GPUs", f"{gpu_count} x {gpu_type}", found, "ok" if ok else "fail",
                              "" if ok else f"RunPod gave another GPU set: terminate the pod and retry "
                              f"(pods[{role}].gpu_type / gpu_count)"))  # fmt: skip
            drv = g.get("driver")
            rows.append(Check(pod, "GPU driver", f">= {MIN_DRIVER[0]}.{MIN_DRIVER[1]} (CUDA 12)", drv or "unknown",
                              "ok" if _driver_ok(drv) else "fail", "" if _driver_ok(drv) else
                              "pick another data center or pod: its driver is too old for CUDA 12"))  # fmt: skip
        else:
            rows.append(Check(pod, "GPUs", f"{gpu_count} x {gpu_type}", (g.get("error") or "no nvidia-smi")[:200],
                              "fail", "a GPU pod without a working nvidia-smi: terminate it and retry"))  # fmt: skip
        shm = facts.get("shm_bytes")
        ok = shm is not None and shm >= SHM_MIN_BYTES
        rows.append(Check(pod, "/dev/shm", ">= 8 GB (RunPod's Ray/vLLM guide)",
                          _gib(shm) if shm is not None else "absent", "ok" if ok else "fail",
                          "" if ok else "NCCL and vLLM keep buffers in /dev/shm: remount it larger "
                          "(`mount -o remount,size=16G /dev/shm`, as r1lab does before setup) or use a pod/template "
                          "with a larger shm"))  # fmt: skip
        if needs.malloc:
            bad = sorted(k for k, v in needs.malloc.items() if v != "1")
            rows.append(Check(pod, "MALLOC_ARENA_MAX", "1 in every Ray/vLLM command (RunPod's guide)",
                              "1" if not bad else f"unset in {', '.join(bad)}", "ok" if not bad else "fail",
                              "" if not bad else "r1lab.serve.commands sets it: update r1lab", "rendered"))  # fmt: skip
    paths = facts.get("paths") or {}
    vol = paths.get(volume) or {}
    if weights_bytes is not None:
        free = vol.get("free")
        have = sum((facts.get("sizes") or {}).values())
        need = max(weights_bytes - have, 0.0)
        ok = bool(vol.get("exists")) and free is not None and free >= need
        rows.append(Check(pod, f"volume free space ({volume})", f">= {_gib(need)} (the weights"
                          + (f", {_gib(have)} already there)" if have else ")"),
                          _gib(free) if free is not None else "not mounted", "ok" if ok else "fail",
                          "" if ok else "a larger network volume (volume.size_gb) or free space on it"))  # fmt: skip
    if weights_file is not None:
        ok = bool((facts.get("files") or {}).get(weights_file))
        rows.append(Check(pod, "weights on the volume", weights_file, "present" if ok else "missing",
                          "ok" if ok else "fail", "" if ok else "run 01_environment (or `r1lab download`) first"))  # fmt: skip
    if clock_local is not None:
        t0, t1 = clock_local
        off = facts["time"] - (t0 + t1) / 2
        slack = (t1 - t0) / 2
        ok = abs(off) <= 60 + slack
        rows.append(Check(pod, "clock vs this machine", "within 60 s", f"{off:+.2f} s (+/- {slack:.2f} s)",
                          "ok" if ok else "warn", "" if ok else "the pod's or this machine's clock is off: NTP"))  # fmt: skip
    return rows


def _iface_row(pod: str, facts: dict[str, Any], address: str, network: str) -> Check:
    iface = facts.get("iface")
    if iface is None:
        return Check(pod, "private interface", f"an interface holding {address}",
                     f"none ({', '.join(f'{k}={v}' for k, v in (facts.get('ifaces') or {}).items())})", "fail",
                     "the pod has no private address: enable Global Networking (provider.network) or use an "
                     "Instant Cluster")  # fmt: skip
    if network == "instant-cluster" and iface != "ens1":
        return Check(pod, "private interface", f"ens1 holds {address} (RunPod Instant Cluster)", iface, "warn",
                     "NCCL/GLOO/UCX interfaces follow the address, but RunPod documents ens1: check the cluster")  # fmt: skip
    return Check(pod, "private interface", f"an interface holding {address}", iface, "ok")


# --- the stage ----------------------------------------------------------------------------------------------


def _pods_of(exp: Experiment, executors: dict[str, Executor]) -> dict[str, Any]:
    by_role = {p.role: p for p in exp.pods}
    out = {}
    for name in executors:
        role = name if name in by_role else name.rsplit("-", 1)[0]
        out[name] = by_role[role]
    return out


def run_preflight(
    exp: Experiment,
    stage: str,
    executors: dict[str, Executor],
    *,
    deployment: Any = None,
    weights_bytes: float | None = None,
    run_dir: Path | None = None,
    addresses: dict[str, str] | None = None,
    raise_on_failure: bool = True,
    show: Callable[[str], None] | None = print,
) -> Preflight:
    """Check every pod of `executors` for `stage` ("environment", "single", "multi", "dynamo").

    deployment: the stage's rendered commands (default: rendered here with the pods' addresses).
    weights_bytes: for "environment", the bytes the download will put on the volume."""
    start = time.monotonic()
    addrs = {n: (addresses or {}).get(n) or ex.address for n, ex in executors.items()}
    if stage != "environment" and deployment is None:
        from r1lab.serve.commands import nodes_of, render

        deployment = render(exp, stage, nodes=nodes_of(exp, addrs))  # type: ignore[arg-type]
    needs = stage_needs(deployment) if deployment is not None else {}
    if stage == "environment":  # the download runs the pod's python3 (and pip installs huggingface_hub)
        needs = {n: Needs({"python3"}) for n in executors}
    groups = _pods_of(exp, executors)
    volume = exp.volume.mount
    weights_file = f"{exp.model.path}/config.json" if stage != "environment" else None

    first = next(iter(executors), "")  # the volume is shared: its read rate is measured on one pod

    def cfg_for(name: str) -> dict[str, Any]:
        n = needs.get(name) or Needs()
        binaries = set(n.binaries) | ({"python3"} if stage == "environment" else set())
        mods = set(n.modules) | ({"huggingface_hub", "pip"} if stage == "environment" else set())
        return {"binaries": sorted(binaries), "modules": sorted(mods), "dists": sorted(n.dists),
                "versions": {b: _VERSION_ARGV[b] for b in binaries if b in _VERSION_ARGV},
                "paths": [volume], "files": [weights_file] if weights_file else [], "address": addrs[name],
                "sizes": [exp.model.path] if stage == "environment" else [],
                "read": exp.model.path if stage != "environment" and name == first else None}  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, len(executors))) as pool:
        futs = {name: pool.submit(_facts, ex, cfg_for(name)) for name, ex in executors.items()}
        results = {name: f.result() for name, f in futs.items()}
    checks: list[Check] = []
    notes: list[str] = []
    for name, (facts, t0, t1, raw) in results.items():
        pod = groups[name]
        rows = judge_pod(
            name, pod.role, facts, raw, exp=exp, needs=needs.get(name), gpu_type=pod.gpu_type,
            gpu_count=pod.gpu_count, setup=pod.setup, volume=volume,
            weights_bytes=weights_bytes if stage == "environment" else None, weights_file=weights_file,
            clock_local=(t0, t1),
        )  # fmt: skip
        if stage == "environment" and facts is not None:
            mods = facts.get("modules") or {}
            ok = bool(mods.get("huggingface_hub") or mods.get("pip"))
            rows = [r for r in rows if r.check not in ("module huggingface_hub", "module pip")]
            rows.append(Check(name, "huggingface_hub or pip", "importable (the download installs huggingface_hub "
                              "with pip)", "found" if ok else "neither", "ok" if ok else "fail",
                              "" if ok else f"use an image with pip (pods[{pod.role}].image)"))  # fmt: skip
        if facts is not None and len(needs) > 1:
            rows.append(_iface_row(name, facts, addrs[name], exp.provider.network))
        checks += rows
    serving = [n for n in executors if n in needs]
    if len(serving) > 1 and all(results[n][0] is not None for n in serving):
        checks += _network_checks(exp, serving, executors, addrs, needs, notes)
    read = (results.get(first, (None,))[0] or {}).get("read") or {}
    pf = Preflight(stage, checks, time.monotonic() - start, notes)
    if read.get("bytes_per_s"):
        pf.volume_read_bps = float(read["bytes_per_s"])
        checks.append(Check(first, "volume read rate", "measured (sets the launch deadline)",
                            f"{read['bytes_per_s'] / 1e6:,.0f} MB/s ({read['bytes'] / 1e6:.1f} MB of "
                            f"{Path(read['file']).name} in {read['seconds']:.2f} s)", "ok"))  # fmt: skip
    if run_dir is not None:
        (Path(run_dir) / f"preflight-{stage}.json").write_text(json.dumps(pf.as_dict(), indent=1) + "\n")
    if show is not None:
        show(format_table(pf))
    if raise_on_failure:
        pf.raise_for_failure()
    return pf


def _network_checks(
    exp: Experiment,
    pods: list[str],
    executors: dict[str, Executor],
    addrs: dict[str, str],
    needs: dict[str, Needs],
    notes: list[str],
) -> list[Check]:
    """Listeners on every pod's plan ports, then from every pod: connects, round trip, clock, bandwidth."""
    token = secrets.token_hex(4)
    stop = f"/tmp/r1lab-preflight-{token}.stop"
    ready: dict[str, dict[str, Any]] = {}
    events = {p: threading.Event() for p in pods}

    def listen(p: str) -> None:
        ports = sorted(set(needs[p].ports) | {LINK_PORT})
        cfg = {"address": addrs[p], "ports": ports, "seconds": 40, "stop": stop}

        def on_line(line: str) -> None:
            got = _parse(line)
            if got is not None:
                ready[p] = got
                events[p].set()

        try:
            executors[p].run(_probe_command("serve", cfg), timeout=60, on_line=on_line, check=False)
        finally:
            events[p].set()

    threads = [threading.Thread(target=listen, args=(p,), daemon=True) for p in pods]
    for t in threads:
        t.start()
    rows: list[Check] = []
    try:
        for p in pods:
            events[p].wait(30)
        for p in pods:
            got = ready.get(p)
            if got is None:
                rows.append(Check(p, "port listeners", "the probe listens on the plan's ports", "no answer", "fail",
                                  "check that python3 runs on the pod"))  # fmt: skip
                continue
            for port, err in (got.get("in_use") or {}).items():
                what = needs[p].ports.get(int(port), "preflight link probe")
                rows.append(Check(p, f"port {port} free ({what})", "free before launch", f"in use: {err}", "fail",
                                  f"another process holds {port} on {p}: stop it (r1lab teardown RUN_DIR) or "
                                  "restart the pod"))  # fmt: skip
        if any(r.status == "fail" for r in rows):
            return rows

        def client(src: str) -> tuple[str, dict[str, Any] | None, str]:
            targets = [{"pod": d, "address": addrs[d], "ports": sorted(needs[d].ports), "link_port": LINK_PORT}
                       for d in pods if d != src]  # fmt: skip
            res = executors[src].run(_probe_command("client", {"targets": targets, "timeout": 2.0,
                                                               "bw_seconds": 1.5}), timeout=45, check=False)  # fmt: skip
            return src, _parse(res.output), res.output[-300:]

        with ThreadPoolExecutor(max_workers=len(pods)) as pool:
            outs = list(pool.map(client, pods))
    finally:
        for p in pods:
            executors[p].run(f"touch {stop}", timeout=30, check=False)
        for t in threads:  # the listeners must be gone before anything binds the plan's ports
            t.join(65)
        for p in pods:
            executors[p].run(f"rm -f {stop}", timeout=30, check=False)
    from r1lab.perf.network import internode_link

    link = internode_link(exp.provider.network)
    assumed_mbit = link.gb_s * 8e3
    for src, res, raw in outs:
        if res is None:
            rows.append(Check(src, "network probe", "answers", raw.strip()[-200:] or "no output", "fail",
                              "check that python3 runs on the pod"))  # fmt: skip
            continue
        for dst, ports in sorted(res["ports"].items()):
            for port, status in sorted(ports.items(), key=lambda kv: int(kv[0])):
                what = needs[dst].ports.get(int(port), "")
                ok = status == "ok"
                rows.append(Check(src, f"TCP {src} -> {dst}:{port} ({what})", "connects", status,
                                  "ok" if ok else "fail", "" if ok else f"open TCP {port} from {src} to {dst} "
                                  f"(a firewall or iptables rule on {dst} blocks it; RunPod Global Networking "
                                  "allows all ports between a team's pods)"))  # fmt: skip
        for dst, ln in sorted(res["links"].items()):
            if ln.get("error"):
                rows.append(Check(src, f"link {src} -> {dst}", "the link probe answers", ln["error"], "fail",
                                  f"open TCP {LINK_PORT} between the pods"))  # fmt: skip
                continue
            rate = ln["mbit_s"]
            if exp.provider.network == "global-networking":
                ok = rate >= 0.5 * assumed_mbit
                rows.append(Check(src, f"bandwidth {src} -> {dst}", f"~{assumed_mbit:,.0f} Mbit/s (the plan's "
                                  f"{link.name})", f"{rate:,.0f} Mbit/s ({ln['bytes'] / 1e6:.1f} MB in "
                                  f"{ln['seconds']:.2f} s)", "ok" if ok else "warn",
                                  "" if ok else "the link is slower than the plan assumed: re-plan (00_plan) "
                                  "with the measured rate (dynamo.kv_transfer_gbps)"))  # fmt: skip
                lat_ok = ln["rtt_ms"] <= 5 * 2 * link.latency_us / 1e3
                rows.append(Check(src, f"round trip {src} -> {dst}", f"<= {10 * link.latency_us / 1e3:.0f} ms "
                                  f"(plan: {link.latency_us / 1e3:g} ms one way)", f"{ln['rtt_ms']:.2f} ms",
                                  "ok" if lat_ok else "warn"))  # fmt: skip
            else:
                rows.append(Check(src, f"bandwidth {src} -> {dst}", f"the plan's {link.name} ({link.gb_s * 8:g} "
                                  "Gbit/s per GPU, RDMA)", f"{rate:,.0f} Mbit/s over one TCP stream "
                                  "(not comparable with RDMA)", "ok"))  # fmt: skip
                rows.append(
                    Check(src, f"round trip {src} -> {dst}", "measured", f"{ln['rtt_ms']:.2f} ms", "ok")
                )
            off = ln.get("offset_s") or 0.0
            status = "fail" if abs(off) > CLOCK_FAIL_S else "warn" if abs(off) > CLOCK_WARN_S else "ok"
            rows.append(Check(src, f"clock offset {dst} - {src}", f"within {CLOCK_WARN_S:g} s", f"{off * 1e3:+.1f} ms",
                              status, "" if status == "ok" else "synchronize the pods' clocks (NTP/chrony)"))  # fmt: skip
    notes.append(f"ports and link measured over TCP between {', '.join(pods)} on their private addresses")
    return rows


# --- views --------------------------------------------------------------------------------------------------


def format_table(pf: Preflight) -> str:
    """The table as plain text (what the runner's log and a terminal show)."""
    head = f"preflight {pf.stage}: {len(pf.checks)} checks, {len(pf.failures)} failed, {pf.seconds:.1f} s"
    lines = [head]
    for c in pf.checks:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[c.status]
        src = "" if c.source == "measured" else f" [{c.source}]"
        lines.append(
            f"  {mark} {c.pod:<10} {c.check}: {c.found}{src}" + (f"  -> {c.fix}" if c.status != "ok" else "")
        )
    return "\n".join(lines)


def table(ctx: Any, stage: str) -> Any:
    """The stage's preflight table from the run dir (a pandas DataFrame), for notebooks."""
    import pandas as pd

    run_dir = Path(getattr(ctx, "run_dir", ctx))
    data = json.loads((run_dir / f"preflight-{stage}.json").read_text())
    return pd.DataFrame(
        data["checks"], columns=["pod", "check", "expected", "found", "status", "source", "fix"]
    )
