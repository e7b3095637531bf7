"""`r1lab calibrate`: run gpu_bench.py on this CUDA machine (--local) or on a GPU pod over SSH (--pod), bring
its records and hardware profile into --out, check the profile against the performance model's loader, and
print the measured figures against the datasheet (and against earlier measurements with --reference).

    r1lab calibrate --local --out outputs/cal-h200
    r1lab calibrate --pod 203.0.113.7:22022 --ssh-key ~/.ssh/id_ed25519 --out RUN_DIR/calibration
    r1lab calibrate --local --out X --reference ../shared/calibration/h200x4

Exit codes: 0 measured; 2 refused (no CUDA / no PyTorch: the message says what is missing); 3 some measurement
failed its check (above its datasheet ceiling, or a wrong result; the rest is kept); 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from r1lab.calibrate import gpu_bench
from r1lab.calibrate.summary import headline, lines, read_jsonl, vs_reference

SCRIPT = Path(gpu_bench.__file__).resolve()
OUTPUT_FILES = ("records.jsonl", "topology.txt")


def parse_args(argv: list[str]) -> argparse.Namespace:
    intro, _, rest = __doc__.partition("\n\n")  # the whole first paragraph, then the examples and exit codes
    p = argparse.ArgumentParser(prog="r1lab calibrate", description=intro, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="this machine's CUDA GPUs")
    where.add_argument("--pod", metavar="HOST[:PORT]", help="a GPU pod reachable over SSH (port default 22)")
    p.add_argument("--out", required=True, type=Path, help="new directory for records.jsonl and <slug>.json")
    p.add_argument("--ssh-key", type=Path, help="private key for --pod (default: $R1LAB_SSH_KEY)")
    p.add_argument("--user", default="root", help="SSH user for --pod (default root)")
    p.add_argument("--python", help="interpreter with PyTorch (default: this one locally, python3 on a pod)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use (default all)")
    p.add_argument("--samples", type=int, default=15, help="timed samples per measurement")
    p.add_argument("--quick", action="store_true", help="fewer shapes and sizes")
    p.add_argument("--skip", action="append", default=[], choices=["copy", "gemm", "kv", "allreduce"])
    p.add_argument(
        "--reference", type=Path, help="directory of earlier JSON-lines measurements to compare with"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the measurement may take (pod)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument(
        "--dry-run-cpu", action="store_true", help="tests only: tiny shapes on the CPU, measures nothing"
    )
    return p.parse_args(argv)


def bench_args(a: argparse.Namespace) -> list[str]:
    """gpu_bench.py's options from ours (its --out is added where it runs)."""
    args = ["--samples", str(a.samples)]
    if a.gpus:
        args += ["--gpus", str(a.gpus)]
    if a.quick:
        args.append("--quick")
    for s in a.skip:
        args += ["--skip", s]
    if a.dry_run_cpu:
        args.append("--dry-run-cpu")
    return args


def run_local(a: argparse.Namespace) -> int:
    cmd = [a.python or sys.executable, str(SCRIPT), *bench_args(a), "--out", str(a.out)]
    if a.dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ, PYTHONUNBUFFERED="1", **gpu_bench.SAFE_ENV)
    return subprocess.run(cmd, env=env, check=False).returncode


def _split_host(pod: str) -> tuple[str, int]:
    host, _, port = pod.rpartition(":") if pod.count(":") == 1 else (pod, "", "22")
    if not port.isdigit():
        raise SystemExit(f"r1lab calibrate: --pod {pod!r}: expected HOST or HOST:PORT")
    return host, int(port)


def remote_command(remote: str, python: str, args: list[str]) -> str:
    """The shell command that runs the uploaded script on a pod (NVLink multicast kept off)."""
    env = " ".join(f"{k}={v}" for k, v in gpu_bench.SAFE_ENV.items())
    return f"cd {remote} && {env} PYTHONUNBUFFERED=1 {shlex.quote(python)} gpu_bench.py {shlex.join(args)}"


def calibrate_over_ssh(
    ssh: Any, out: Path, args: list[str] | None = None, python: str = "python3", timeout_s: float = 900.0
) -> int:
    """Run gpu_bench.py on a pod through an open `r1lab.cloud.pods.PodSSH` (e.g. the pod of 02_single_node):
    upload it, stream its output here, fetch records.jsonl, topology.txt and the profile into `out` (e.g.
    `<run_dir>/calibration`), remove the remote copy. Returns the script's exit code (2: refused, no CUDA)."""
    remote = f"/tmp/r1lab-calibrate-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        ssh.run(f"mkdir -p {remote}")
        ssh.upload(SCRIPT, f"{remote}/gpu_bench.py")
        cmd = remote_command(remote, python, [*(args or []), "--out", f"{remote}/out"])
        result = ssh.run(cmd, timeout_s=timeout_s, check=False, stream=True)
        for name in ssh.run(f"ls {remote}/out 2>/dev/null", check=False).stdout.split():
            if name.endswith(".json") or name in OUTPUT_FILES:
                ssh.download(f"{remote}/out/{name}", out / name)
    finally:
        ssh.run(f"rm -rf {remote}", check=False)
    return result.exit_code if result.exit_code is not None else 1


def run_pod(a: argparse.Namespace) -> int:
    """--pod HOST[:PORT]: connect with the given key (host key pinned in --out/known_hosts.json) and run."""
    from r1lab.cloud.pods import HostKeyStore, PodSSH, SshKey

    host, port = _split_host(a.pod)
    py = a.python or "python3"
    args = bench_args(a)
    if a.dry_run:
        remote = "/tmp/r1lab-calibrate-XXXXXXXX"
        print(f"ssh {a.user}@{host} -p {port} mkdir -p {remote}")
        print(f"sftp put {SCRIPT} {remote}/gpu_bench.py")
        cmd = remote_command(remote, py, [*args, "--out", f"{remote}/out"])
        print(f"ssh {a.user}@{host} -p {port} {shlex.quote(cmd)}")
        print(f"sftp get {remote}/out/* {a.out}/")
        return 0
    key_path = a.ssh_key or (Path(os.environ["R1LAB_SSH_KEY"]) if os.environ.get("R1LAB_SSH_KEY") else None)
    if key_path is None:
        raise SystemExit(
            "r1lab calibrate --pod: give --ssh-key PATH (or set R1LAB_SSH_KEY) for the pod's key"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    ssh = PodSSH(
        host,
        port,
        a.user,
        SshKey.load(key_path),
        HostKeyStore(a.out / "known_hosts.json"),
        pod_id=f"{host}:{port}",
        name=f"calibrate@{host}",
        log_path=a.out / "ssh.log",
    )
    with ssh:
        return calibrate_over_ssh(ssh, a.out, args, py, a.timeout)


def check_outputs(out: Path, reference: Path | None) -> int:
    """Validate the profile with the performance model's loader and print measured against datasheet."""
    records_path = out / "records.jsonl"
    if not records_path.exists():
        return 0
    records = read_jsonl(records_path)
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    ref: dict[str, Any] | None = None
    if reference is not None:
        ref_records = [r for f in sorted(reference.glob("*.jsonl")) for r in read_jsonl(f)]
        if not ref_records:
            print(f"error: --reference {reference}: no *.jsonl measurements there", file=sys.stderr)
            return 1
        ref = vs_reference(records, ref_records)
    print("\n".join(lines(headline(records), ref)))
    profiles = sorted(p for p in out.glob("*.json") if p.name != "known_hosts.json")
    if meta.get("dry_run"):
        print(f"dry run on CPU: {[p.name for p in profiles]} are not measurements and are not validated")
        return 0
    from r1lab.perf.profile import load_profile

    for p in profiles:
        try:
            prof = load_profile(p)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"profile {p}: {prof.gpus} x {prof.device_name}, {len(prof.gemm)} GEMMs, "
            f"{len(prof.allreduce)} all-reduces; loads in r1lab.perf.profile"
        )
    return 0


def cli_main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.out.exists() and (a.out / "records.jsonl").exists() and not a.dry_run:
        print(
            f"error: {a.out}/records.jsonl exists; calibrate never overwrites: give a new --out",
            file=sys.stderr,
        )
        return 1
    rc = run_local(a) if a.local else run_pod(a)
    if a.dry_run:
        return rc
    if rc == 2:
        print("r1lab calibrate: refused (see the message above); nothing was measured", file=sys.stderr)
        return rc
    checked = check_outputs(a.out, a.reference)
    return rc or checked
