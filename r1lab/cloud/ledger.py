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
import socket
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


class ProviderGone(Exception):
    """The twin that held a resource is no longer up: its pods, volumes and keys went with it."""


def _twin_at(base_url: str, run_dir: Path | None) -> Any:
    """The running twin serving `base_url` (the run's own, from its ledger, or the default one), or None."""
    from r1lab.cloud.twin.api import Twin

    dirs: list[str | None] = [None]
    if run_dir is not None:
        dirs = [e["meta"].get("state_dir") for e in Ledger(run_dir).entries() if e["kind"] == "twin"] + dirs
    for d in dirs:
        twin = Twin.find(d)
        if twin is not None and twin.url.rstrip("/") == base_url.rstrip("/"):
            return twin
    return None


def _listening(base_url: str) -> bool:
    u = urllib.parse.urlparse(base_url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=2):
            return True
    except OSError:
        return False


def client_for(entry: dict[str, Any], run_dir: Path | None = None) -> RunPodClient:
    """A client for the API the resource was created on. RunPod: the key from RUNPOD_API_KEY. The twin: its own
    key when it is up (so `r1lab teardown` needs no twin environment); raises ProviderGone when nothing serves
    that loopback address any more (a twin takes its pods, volumes and keys down with it)."""
    base = (entry.get("meta") or {}).get("api_base")
    if entry.get("provider") == "twin" and base:
        twin = _twin_at(base, run_dir)
        if twin is not None:
            return RunPodClient(base_url=base, api_key=twin.api_key)
        if not _listening(base):
            raise ProviderGone(
                f"nothing serves the twin's API at {base} any more, and {entry['name']} went with it"
            )
    return RunPodClient(base_url=base)


def _gone_with_provider(handler: Any) -> Any:
    """A handler for which a resource on a twin that is down is already gone (nothing to delete)."""

    def wrapped(entry: dict[str, Any], run_dir: Path, *args: Any, **kw: Any) -> None:
        try:
            client = client_for(entry, run_dir)
        except ProviderGone as exc:
            print(f"  {exc}: nothing to delete", file=sys.stderr)
            return
        handler(entry, run_dir, client, *args, **kw)

    wrapped.__name__, wrapped.__doc__ = handler.__name__, handler.__doc__
    return wrapped


# --- teardown handlers (fn(entry, run_dir)) -----------------------------------------------------------------


def _pending_name(entry: dict[str, Any]) -> str | None:
    return entry["name"] if str(entry["id"]).startswith("pending:") else None


@_gone_with_provider
def delete_pod(entry: dict[str, Any], run_dir: Path, client: RunPodClient) -> None:
    if (name := _pending_name(entry)) is not None:
        for pod in client.find_pods(name):
            client.terminate_pod(pod["id"])
        return
    client.terminate_pod(entry["id"])


def delete_volume(entry: dict[str, Any], run_dir: Path) -> None:
    try:
        client = client_for(entry, run_dir)
    except ProviderGone as exc:
        print(f"  {exc}: nothing to delete", file=sys.stderr)
        return
    _delete_volume(entry, client)


def _delete_volume(entry: dict[str, Any], client: RunPodClient) -> None:
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


@_gone_with_provider
def delete_cluster(entry: dict[str, Any], run_dir: Path, client: RunPodClient) -> None:
    if (name := _pending_name(entry)) is not None:
        for c in client.find_clusters(name):
            client.delete_cluster(c["id"])
        return
    client.delete_cluster(entry["id"])


@_gone_with_provider
def delete_ssh_key(entry: dict[str, Any], run_dir: Path, client: RunPodClient, settle_s: float = 3.0) -> None:
    """Remove the run's public key from the account (hygiene; it costs nothing).

    The account's keys are one list that PUT replaces whole, so another r1lab process registering its key at the
    same moment can write ours back (a lost update the API gives no way to prevent). Check again for a few
    seconds and remove it again if it reappears; `r1lab reap` does the same."""
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
        _delete_volume({"id": rid, "name": name, "meta": {"api_base": client.base_url}}, client)


def mark_reaped(
    outputs: Path, run_id: str | None, report: ReapReport, api_base: str | None = None
) -> list[Path]:
    """Reconcile the reaped run(s)' ledgers with what the API lists now (append `deleted` events, by="reap"):
    a cloud resource on this API that it no longer lists is gone (reaped now, or deleted earlier: a kill during
    teardown), one on a twin that is down went with it; processes on pods end with their pods, so once a run
    holds no pod its pod-process and serve-daemons entries are closed too."""
    if report.dry_run:
        return []
    listed = {(k, i) for k, i, _ in report.remaining}
    listed_names = {n for _, _, n in report.remaining}
    touched = []
    pattern = f"*/{run_id}/ledger.jsonl" if run_id else "*/*/ledger.jsonl"
    for path in sorted(Path(outputs).glob(pattern)):
        ledger = Ledger(path.parent)
        changed = False
        for e in ledger.live():
            if not e["kind"].startswith("runpod-"):
                continue
            base = (e.get("meta") or {}).get("api_base") or ""
            if api_base is not None and base.rstrip("/") == api_base.rstrip("/"):
                pending = str(e["id"]).startswith("pending:")
                gone = e["name"] not in listed_names if pending else (e["kind"], e["id"]) not in listed
                why = "reap"
            else:
                gone = e.get("provider") == "twin" and bool(base) and not _listening(base)
                why = "reap: its twin is down"
            if gone:
                ledger.deleted(e["kind"], e["id"], by=why)
                changed = True
        live = ledger.live()
        if not any(e["kind"] in (KIND_POD, KIND_CLUSTER) for e in live):
            for e in live:
                if e["kind"] in ("pod-process", "serve-daemons"):
                    ledger.deleted(e["kind"], e["id"], by="reap: its pod is gone")
                    changed = True
        if changed:
            touched.append(path.parent)
    return touched


def reap_local(outputs: Path, run_id: str | None = None, dry_run: bool = False) -> list[str]:
    """Stop what runs on this machine for the run(s) under `outputs`: live `local-process` entries (Prometheus,
    exporters, ...) whose process is still the one recorded (same program), then twins a run started (kind
    `twin`: its daemon, namespaces and pod processes). Returns one line per thing handled."""
    from r1lab.teardown import kill_local_process

    done: list[str] = []
    pattern = f"*/{run_id}/ledger.jsonl" if run_id else "*/*/ledger.jsonl"
    ledgers = [Ledger(p.parent) for p in sorted(Path(outputs).glob(pattern))]
    for ledger in ledgers:
        for e in ledger.live():
            if e["kind"] != "local-process":
                continue
            pid = int(e["meta"].get("pid") or e["id"])
            ours = _same_program(pid, str(e["meta"].get("command", "")))
            done.append(f"{'would stop' if dry_run else 'stopped'} local {e['name']} (pid {pid})"
                        if ours else f"local {e['name']} (pid {pid}) already gone")  # fmt: skip
            if dry_run:
                continue
            if ours:
                kill_local_process(e, ledger.run_dir)
            ledger.deleted(e["kind"], e["id"], by="reap")
    for ledger in ledgers:
        for e in ledger.live():
            if e["kind"] != "twin":
                continue
            done.append(f"{'would take' if dry_run else 'took'} down the twin {e['name']} this run started")
            if not dry_run:
                from r1lab.cloud.twin.api import teardown_twin

                teardown_twin(e, ledger.run_dir)
                ledger.deleted(e["kind"], e["id"], by="reap")
    return done


def _same_program(pid: int, command: str) -> bool:
    """Whether `pid` still runs the program recorded for it (a pid the kernel reused for another is not ours)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    words = command.split()
    program = Path(words[0]).name.encode() if words else b""
    return bool(program) and any(Path(a.decode(errors="replace")).name.encode() == program for a in argv[:2])


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
    base = RunPodClient(base_url=args.api_base).base_url
    if provider_of(base) == "twin" and not _listening(base):
        # a twin that is down took its pods, volumes and keys with it: only the ledgers and this machine remain
        print(f"reap: nothing serves the twin's API at {base}: none of its resources are left")
        report = ReapReport(prefix=resource_name(args.run, "") if args.run else PREFIX, dry_run=args.dry_run)
        mark_reaped(args.outputs, args.run, report)
    else:
        try:
            twin = _twin_at(base, None) if provider_of(base) == "twin" else None
            key = twin.api_key if twin is not None else None  # the twin's own key: no twin environment needed
            client = RunPodClient(base_url=base, api_key=key)
            report = reap(client, run_id=args.run, dry_run=args.dry_run)
        except CloudError as exc:
            print(f"reap failed: {exc}", file=sys.stderr)
            return 2
        print(report)
        mark_reaped(args.outputs, args.run, report, api_base=base)
    for line in reap_local(args.outputs, args.run, dry_run=args.dry_run):
        print(line)
    return 0 if report.ok else 1


def teardown(run_dir: Path | str) -> TeardownReport:
    """teardown_run with this module's handlers registered (for callers outside the runner)."""
    register_handlers()
    return teardown_run(run_dir)


register_handlers()  # at import: every pod/volume/cluster/key this module records names its handler

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
