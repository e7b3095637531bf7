"""RunPod resources in the run's ledger: names, teardown handlers, `r1lab reap`, and a teardown guard.

Every resource is named `r1lab-<run_id>-<role>` and recorded in `<run_dir>/ledger.jsonl` (r1lab.teardown)
before anything waits on it; a create whose answer never came is recorded first as `pending:<name>` so a kill
between the POST and its answer still leaves a trace that teardown resolves by name. Handlers (registered in
r1lab.teardown's defaults as "r1lab.cloud.ledger:delete_pod" etc.) treat "not found" as done.

`r1lab reap [--run ID | --all] [--dry-run]` does not trust any ledger: it lists pods, clusters, volumes (and
per-run SSH keys, by their comment) by name prefix, deletes them, and lists again to prove nothing is left (exit 1 if something is).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.cloud.errors import CloudError
from r1lab.cloud.runpod import RunPodClient
from r1lab.teardown import Ledger, TeardownReport, teardown_run

PREFIX = "r1lab-"
KIND_POD, KIND_VOLUME, KIND_CLUSTER, KIND_SSH_KEY = (
    "runpod-pod",
    "runpod-volume",
    "runpod-cluster",
    "runpod-ssh-key",
)
HANDLERS = {
    KIND_POD: "r1lab.cloud.ledger:delete_pod",
    KIND_VOLUME: "r1lab.cloud.ledger:delete_volume",
    KIND_CLUSTER: "r1lab.cloud.ledger:delete_cluster",
    KIND_SSH_KEY: "r1lab.cloud.ledger:delete_ssh_key",
}


def resource_name(run_id: str, role: str) -> str:
    """`r1lab-<run_id>-<role>`: the only name r1lab gives a cloud resource."""
    return f"{PREFIX}{run_id}-{role}"


def provider_of(base_url: str) -> str:
    """'twin' for an emulator on loopback, 'runpod' otherwise (the ledger's provider field)."""
    host = urllib.parse.urlparse(base_url).hostname or ""
    try:
        return "twin" if ipaddress.ip_address(host).is_loopback else "runpod"
    except ValueError:
        return "twin" if host == "localhost" else "runpod"


def record(
    ledger: Ledger, client: RunPodClient, kind: str, id: str, name: str, **meta: Any
) -> dict[str, Any]:
    """Record a resource with what teardown needs to find it again (the API base, never the key)."""
    return ledger.record(kind, id, name, provider_of(client.base_url), api_base=client.base_url, **meta)


def client_for(entry: dict[str, Any]) -> RunPodClient:
    """A client for the API the resource was created on (key from RUNPOD_API_KEY)."""
    return RunPodClient(base_url=(entry.get("meta") or {}).get("api_base"))


# --- teardown handlers (fn(entry, run_dir)) -----------------------------------------------------------------


def _pending_name(entry: dict[str, Any]) -> str | None:
    return entry["name"] if str(entry["id"]).startswith("pending:") else None


def delete_pod(entry: dict[str, Any], run_dir: Path) -> None:
    client = client_for(entry)
    if (name := _pending_name(entry)) is not None:
        for pod in client.find_pods(name):
            client.terminate_pod(pod["id"])
        return
    client.terminate_pod(entry["id"])


def delete_volume(entry: dict[str, Any], run_dir: Path) -> None:
    client = client_for(entry)
    ids = [v["id"] for v in client.find_volumes(n)] if (n := _pending_name(entry)) else [entry["id"]]
    for vid in ids:
        # a volume still attached to a terminating pod is refused for a moment: retry briefly
        for attempt in range(10):
            try:
                client.delete_volume(vid)
                break
            except CloudError:
                if attempt == 9:
                    raise
                time.sleep(min(5.0, 0.5 * 2**attempt))


def delete_cluster(entry: dict[str, Any], run_dir: Path) -> None:
    client = client_for(entry)
    if (name := _pending_name(entry)) is not None:
        for c in client.find_clusters(name):
            client.delete_cluster(c["id"])
        return
    client.delete_cluster(entry["id"])


def delete_ssh_key(entry: dict[str, Any], run_dir: Path, settle_s: float = 3.0) -> None:
    """Remove the run's public key from the account (hygiene; it costs nothing).

    The account's keys are one list that PUT replaces whole, so another r1lab process registering its key at the
    same moment can write ours back (a lost update the API gives no way to prevent). Check again for a few
    seconds and remove it again if it reappears; `r1lab reap` does the same."""
    client = client_for(entry)
    fields = entry["meta"]["public_key"].strip().split()[:2]
    deadline = time.monotonic() + settle_s
    while True:
        client.remove_ssh_key(entry["meta"]["public_key"])
        time.sleep(0.5)
        if not any(k.split()[:2] == fields for k in client.get_ssh_keys()) and time.monotonic() >= deadline:
            return
        if time.monotonic() >= deadline + settle_s:
            return  # still being written back: reap will list and retry


def register_handlers() -> None:
    from r1lab import teardown

    for kind, handler in HANDLERS.items():
        teardown.register(kind, handler)


# --- guard --------------------------------------------------------------------------------------------------


@contextmanager
def guarded(run_dir: Path | str) -> Iterator[Ledger]:
    """Tear the run down on any exit: normal, exception, Ctrl-C or SIGTERM (turned into KeyboardInterrupt).
    SIGKILL cannot be caught: `r1lab reap --run ID` (and the pod-side deadline) cover that case."""
    run_dir = Path(run_dir)
    register_handlers()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.getsignal(signal.SIGTERM)
    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield Ledger(run_dir)
    finally:
        if in_main:
            # a second Ctrl-C must not interrupt the teardown itself
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            report = teardown_run(run_dir)
            if report.deleted or report.failed:
                print(report, file=sys.stderr, flush=True)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --- reap ---------------------------------------------------------------------------------------------------


@dataclass
class ReapReport:
    prefix: str
    found: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, id, name)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str, str]] = field(default_factory=list)
    remaining: list[tuple[str, str, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and (self.dry_run or not self.remaining)

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [f"reap {self.prefix}*: found {len(self.found)}, {verb} {len(self.deleted)}"]
        lines += [f"  {verb} {k} {n} ({i})" for k, i, n in self.deleted]
        lines += [f"  FAILED {k} {n} ({i}): {e}" for k, i, n, e in self.failed]
        if not self.dry_run:
            lines.append(
                f"listed again: {len(self.remaining)} left"
                + "".join(f"\n  LEFT {k} {n} ({i})" for k, i, n in self.remaining)
            )
        return "\n".join(lines)


def _listing(client: RunPodClient, prefix: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    out += [
        (KIND_CLUSTER, c["id"], c["name"]) for c in client.list_clusters() if c["name"].startswith(prefix)
    ]
    out += [
        (KIND_POD, p["id"], p["name"])
        for p in client.list_pods(include_cluster_pods=True)
        if p["name"].startswith(prefix) and not p.get("cluster")
    ]
    out += [(KIND_VOLUME, v["id"], v["name"]) for v in client.list_volumes() if v["name"].startswith(prefix)]
    for k in client.get_ssh_keys():  # per-run keys carry their resource name as the comment
        fields = k.split()
        if len(fields) >= 3 and fields[2].startswith(prefix):
            out.append((KIND_SSH_KEY, ssh_key_id(k), fields[2]))
    return out


def ssh_key_id(public_key: str) -> str:
    """The ledger id of an account SSH key: the tail of its base64 blob."""
    return "key:" + public_key.split()[1][-16:]


def reap(
    client: RunPodClient,
    run_id: str | None = None,
    dry_run: bool = False,
    settle_s: float = 30.0,
) -> ReapReport:
    """Delete every r1lab resource (of one run, or all) by name prefix; list again to prove it."""
    prefix = resource_name(run_id, "") if run_id else PREFIX
    report = ReapReport(prefix=prefix, dry_run=dry_run)
    report.found = _listing(client, prefix)
    if dry_run:
        report.deleted = list(report.found)
        return report
    # clusters and pods first: a volume cannot go while a pod holds it
    for kind in (KIND_CLUSTER, KIND_POD, KIND_VOLUME, KIND_SSH_KEY):
        for k, rid, name in report.found:
            if k != kind:
                continue
            try:
                _delete(client, k, rid, name)
                report.deleted.append((k, rid, name))
            except CloudError as exc:
                report.failed.append((k, rid, name, str(exc)))
    deadline = time.monotonic() + settle_s
    while True:
        report.remaining = _listing(client, prefix)
        if not report.remaining or time.monotonic() >= deadline:
            break
        # The account's SSH keys are one list that PUT replaces whole: another r1lab process adding its own key
        # at the same moment can write ours back (a lost update). Delete what reappeared again.
        for k, rid, name in report.remaining:
            if k == KIND_SSH_KEY:
                try:
                    _delete(client, k, rid, name)
                except CloudError:
                    pass
        time.sleep(1.0)
    return report


def _delete(client: RunPodClient, kind: str, rid: str, name: str) -> None:
    """Delete one resource found by reap (gone already counts as done)."""
    if kind == KIND_CLUSTER:
        client.delete_cluster(rid)
    elif kind == KIND_POD:
        client.terminate_pod(rid)
    elif kind == KIND_SSH_KEY:
        key = {ssh_key_id(k): k for k in client.get_ssh_keys()}.get(rid)
        if key is not None:
            client.remove_ssh_key(key)
    else:
        delete_volume({"id": rid, "name": name, "meta": {"api_base": client.base_url}}, Path("."))


def mark_reaped(outputs: Path, run_id: str | None, report: ReapReport) -> list[Path]:
    """Append `deleted` events to the ledgers of the reaped run(s) for what is provably gone."""
    if report.dry_run:
        return []
    gone = {(k, i) for k, i, _ in report.found} - {(k, i) for k, i, _ in report.remaining}
    touched = []
    pattern = f"*/{run_id}/ledger.jsonl" if run_id else "*/*/ledger.jsonl"
    for path in sorted(Path(outputs).glob(pattern)):
        ledger = Ledger(path.parent)
        changed = False
        for e in ledger.live():
            if not e["kind"].startswith("runpod-"):
                continue
            if (e["kind"], e["id"]) in gone or (
                str(e["id"]).startswith("pending:")
                and not any(n == e["name"] for _, _, n in report.remaining)
            ):
                ledger.deleted(e["kind"], e["id"], by="reap")
                changed = True
        if changed:
            touched.append(path.parent)
    return touched


def cli_main(argv: list[str]) -> int:
    """`r1lab reap [--run ID | --all] [--dry-run]`."""
    if argv and argv[0] == "reap":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="r1lab reap", description="Delete leftover r1lab RunPod resources.")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", metavar="ID", help="only the resources of this run (names r1lab-ID-*)")
    who.add_argument("--all", action="store_true", help="every resource whose name starts with r1lab-")
    ap.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    ap.add_argument("--outputs", type=Path, default=Path("outputs"), help="where run directories live")
    ap.add_argument("--api-base", default=None, help="API base URL (default: RUNPOD_API_BASE or RunPod)")
    args = ap.parse_args(argv)
    try:
        client = RunPodClient(base_url=args.api_base)
        report = reap(client, run_id=args.run, dry_run=args.dry_run)
    except CloudError as exc:
        print(f"reap failed: {exc}", file=sys.stderr)
        return 2
    print(report)
    mark_reaped(args.outputs, args.run, report)
    return 0 if report.ok else 1


def teardown(run_dir: Path | str) -> TeardownReport:
    """teardown_run with this module's handlers registered (for callers outside the runner)."""
    register_handlers()
    return teardown_run(run_dir)


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
