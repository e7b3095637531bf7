"""One call per notebook stage: render, audit, record the commands, time the mocker, launch, check.

`deploy(exp, run_dir, stage, executors, ...) -> Launched` is what notebooks 02-04 (and the twin) call:
1. render the stage's commands with the pods' private addresses (`addresses`, default each executor's address);
2. on the twin (engine mocker), write the performance model's timing tables for each worker group
   (`r1lab.perf.mocker.mocker_setup`) and render again with them;
3. write the replayable command file into `<run_dir>/commands/` (vLLM commands the twin does not run are
   included, marked NOT RUN);
4. launch under a deadline (readiness: alive + /health + one-token completion; log watchers);
5. return the endpoint and the launcher (`launched.launcher.stop()` stops it; the run's teardown also does).
"""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path
from typing import Literal

from r1lab.config import Experiment
from r1lab.execution import Executor
from r1lab.perf.memory import MemoryPlan
from r1lab.resolve import ResolvedDeployment, for_run, resolve
from r1lab.serve.checks import write_command_file
from r1lab.serve.commands import Deployment, MockerTiming, Node, Ports, Stage, nodes_of, render
from r1lab.serve.launch import Launched, Launcher, ServeError
from r1lab.serve.plan_audit import audit_plan, format_audit


def resolve_ip(executor: Executor | None, address: str) -> str:
    """An IP literal as is; a hostname resolved to IPv4 on the pod that owns it (`getent ahostsv4`)."""
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    if executor is None:
        return address
    out = executor.run(f"getent ahostsv4 {shlex.quote(address)} | head -n1", timeout=30, check=False).output
    ip = out.split()[0] if out.split() else ""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ServeError(
            f"cannot resolve private address {address!r}",
            executor.name,
            "resolve",
            out.strip()[:200],
            "check the pods' private network (provider.network)",
        ) from None
    return ip


_IFACE_PY = (
    "import fcntl,os,socket,struct,sys\n"
    "for n in sorted(os.listdir('/sys/class/net')):\n"
    "    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "    try: ip=socket.inet_ntoa(fcntl.ioctl(s.fileno(),0x8915,struct.pack('256s',n[:15].encode()))[20:24])\n"
    "    except OSError: continue\n"
    "    if ip==sys.argv[1]: print(n)"
)


def interface_of(executor: Executor | None, ip: str) -> str | None:
    """The interface holding `ip` on the pod (`ip -o -4 addr`, else Python's SIOCGIFADDR where iproute2 is
    absent); None when no interface holds it or the address is not an IP."""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    if executor is None:
        return None
    q = shlex.quote(ip)
    cmd = (
        f"ip -o -4 addr show 2>/dev/null | awk -v a={q} '{{split($4,x,\"/\"); if (x[1]==a) print $2}}' | head -n1 | "
        f"grep . || python3 -c {shlex.quote(_IFACE_PY)} {q} 2>/dev/null | head -n1"
    )
    out = executor.run(cmd, timeout=30, check=False).output.strip().splitlines()
    return out[-1].split("@")[0] if out else None


ENGINE_START_S = 600.0  # CUDA graphs, NCCL init, torch.compile of an R1-sized engine, beyond reading weights
ASSUMED_READ_BPS = 200e6  # when the volume's read rate was not measured (labelled assumed)


def launch_deadline_s(exp: Experiment, stage: Stage, read_bytes_per_s: float | None) -> tuple[float, str]:
    """How long a stage may take to serve: the engine's start plus 1.5 x the time one node needs to read its
    share of the weights from the volume at the measured rate. Returns (seconds, how it was derived)."""
    from r1lab.model import ModelSpec
    from r1lab.serve.commands import VllmSpec

    if exp.serving.engine == "mocker":
        return ENGINE_START_S, f"{ENGINE_START_S:.0f} s: the twin's mocker reads no weights"
    gpn = exp.gpus_per_node
    par = (
        VllmSpec.from_experiment(exp, tp=gpn, pp=1, dp=1).parallelism
        if stage != "multi"
        else (VllmSpec.from_experiment(exp).parallelism)
    )
    per_node = ModelSpec.deepseek_r1().weight_bytes_per_gpu(par).total * min(par.gpus, gpn)
    rate = read_bytes_per_s or ASSUMED_READ_BPS
    secs = ENGINE_START_S + 1.5 * per_node / rate
    how = (f"{ENGINE_START_S:.0f} s engine start + 1.5 x {per_node / 1e9:,.0f} GB per node at "
           f"{rate / 1e6:,.0f} MB/s ({'measured' if read_bytes_per_s else 'assumed'} volume read rate)")  # fmt: skip
    return secs, how


def mocker_timings(
    exp: Experiment, dep: Deployment, out_dir: Path, resolved: ResolvedDeployment | None = None
) -> dict[str, MockerTiming]:
    """Timing tables from the performance model for every mocker worker group of a rendered deployment, under
    the run's resolved engine spec (`resolved`, default resolve(exp)), each group's KV capacity from the memory
    plan the resolved deployment holds for it."""
    from r1lab.perf.mocker import mocker_setup

    r = resolved or resolve(exp)
    eng = r.engine
    out: dict[str, MockerTiming] = {}
    link = None
    for c in dep.commands:
        if "--kv-transfer-bandwidth" in c.argv:
            link = float(c.argv[c.argv.index("--kv-transfer-bandwidth") + 1])
    decode = dep.mocker_groups.get("decode")
    decode_tp = decode["parallelism"].tp if decode else None
    for group, g in dep.mocker_groups.items():
        spec = g["spec"]
        own = dict(max_num_seqs=spec.max_num_seqs, max_num_batched_tokens=spec.max_num_batched_tokens,
                   max_model_len=spec.max_model_len or 16384)  # fmt: skip
        # the group's one memory plan, as the resolved deployment holds it (prefill/decode by role; else the
        # stage's one engine group)
        sg = r.stage_group(dep.stage, group if group in ("prefill", "decode") else None)
        memory = MemoryPlan.from_dict(sg.memory)
        setup = mocker_setup(
            r.gpu_type, g["parallelism"], "vllm", out_dir, kv_dtype=eng.kv_dtype, gpus_per_node=r.gpus_per_node,
            network_name=exp.provider.network, num_speculative_tokens=eng.num_speculative_tokens,
            disaggregation_mode=g["mode"], kv_transfer_gb_s=link if g["mode"] else None,
            decode_tp=decode_tp if g["mode"] else None, memory=memory, **own,
        )  # fmt: skip
        out[group] = MockerTiming.from_setup(setup)
    return out


def plan_stage(
    exp: Experiment,
    run_dir: Path | str,
    stage: Stage,
    *,
    nodes: list[Node] | None = None,
    ports: Ports | None = None,
    remote_dir: str = "/tmp/r1lab",
    discovery: Literal["etcd", "file"] | None = None,
    engine: Literal["vllm", "mocker"] | None = None,
) -> Deployment:
    """Render a stage as the run's resolved deployment places it (with the model's mocker tables on the twin) and
    write its command file.
    engine: this stage's engine in place of serving.engine (render's `engine`)."""
    run_dir = Path(run_dir)
    r = for_run(run_dir, exp)  # the run's resolved deployment: placement, memory plans
    dep = render(exp, stage, nodes=nodes, ports=ports, remote_dir=remote_dir, discovery=discovery, engine=engine,
                 resolved=r)  # fmt: skip
    if (engine or exp.serving.engine) == "mocker":
        timings = mocker_timings(exp, dep, run_dir / "mocker" / stage, r)
        dep = render(exp, stage, nodes=nodes, ports=ports, mocker=timings, remote_dir=remote_dir,
                     discovery=discovery, engine=engine, resolved=r)  # fmt: skip
    write_command_file(run_dir, dep)
    return dep


def deploy(
    exp: Experiment,
    run_dir: Path | str,
    stage: Stage,
    executors: dict[str, Executor],
    *,
    addresses: dict[str, str] | None = None,
    ports: Ports | None = None,
    deadline_s: float = 1800.0,
    remote_dir: str = "/tmp/r1lab",
    programs: dict[str, str] | None = None,
    discovery: Literal["etcd", "file"] | None = None,
    audit: bool | None = None,
    engine: Literal["vllm", "mocker"] | None = None,
    interfaces: dict[str, str] | None = None,
) -> Launched:
    """Render, record and launch one stage on the pods; raise ServeError (one clear line) if it does not serve.

    addresses: each pod's private address (RunPod Global Networking: `<podId>.runpod.internal`); names are
    resolved to IPv4 on the pod itself (Ray's --node-ip-address and VLLM_HOST_IP want an IP). Default: the
    executor's address (the twin's namespace IPs). audit: print the original plan's audit first (default: on
    for stage single, the first launch of a run)."""
    addrs = {name: ex.address for name, ex in executors.items()} | (addresses or {})
    addrs = {name: resolve_ip(executors.get(name), a) for name, a in addrs.items()}
    if interfaces is None and exp.nodes > 1:  # NCCL/GLOO/UCX sockets on the interface of the private address
        interfaces = {n: i for n, a in addrs.items() if (i := interface_of(executors.get(n), a))}
    nodes = nodes_of(exp, addrs, interfaces)
    if audit if audit is not None else stage == "single":
        print(format_audit(audit_plan(exp)))
    dep = plan_stage(
        exp,
        run_dir,
        stage,
        nodes=nodes,
        ports=ports,
        remote_dir=remote_dir,
        discovery=discovery,
        engine=engine,
    )
    launcher = Launcher(run_dir, executors, remote_dir=remote_dir, programs=programs)
    try:
        endpoint = launcher.launch(dep, deadline_s=deadline_s)
    except BaseException:
        launcher.stop()
        raise
    return Launched(endpoint, launcher, dep)
