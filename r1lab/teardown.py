"""The run's ledger of resources and the teardown that deletes every live one.

`ledger.jsonl` in the run directory is append-only: a resource is recorded as `created` before anything waits on
it, and as `deleted` once its handler has removed it. Handlers are looked up by resource kind; cloud, twin and
serving layers register theirs when imported (`register("runpod-pod", delete_pod)`), and each entry records the
handler's "module:function" so that a teardown in another process finds it. Teardown calls the handler of every
live resource, newest first, and keeps going past failures (each is recorded and reported).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any], Path], None]

# kind -> delete handler. This module owns the registry and only its own kinds; the layers that create resources
# register theirs when imported (r1lab.cloud.ledger, r1lab.cloud.twin, r1lab.serve.launch), and every ledger entry
# names its handler ("handler": "module:function"), so a teardown in a fresh process finds it without a table here.
_HANDLERS: dict[str, str | Handler] = {}
_LOCK = threading.Lock()
_NAME = re.compile(r"^r1lab(?:\.\w+)+:\w+$")


def register(kind: str, handler: str | Handler) -> None:
    """Map a resource kind to its delete handler, given as a callable or a lazy "module:function" string."""
    _HANDLERS[kind] = handler


def handler_name(kind: str) -> str | None:
    """The "module:function" of the handler registered for `kind` in this process (None if none is)."""
    h = _HANDLERS.get(kind)
    if h is None or isinstance(h, str):
        return h
    return f"{h.__module__}:{h.__qualname__}"


def _resolve(kind: str, entry: dict[str, Any] | None = None) -> Handler:
    handler = _HANDLERS.get(kind) or (entry or {}).get("handler")
    if handler is None:
        raise KeyError(
            f"no teardown handler registered for resource kind {kind!r} and its ledger entry names none: "
            "import the module that creates such resources (it registers the handler) and tear down again"
        )
    if isinstance(handler, str):
        if not _NAME.match(handler):
            raise KeyError(f"resource kind {kind!r}: handler {handler!r} is not an r1lab 'module:function'")
        module, _, attr = handler.partition(":")
        handler = getattr(importlib.import_module(module), attr)
    return handler


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class Ledger:
    """Append-only record of the resources one run holds."""

    run_dir: Path
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.path = self.run_dir / "ledger.jsonl"

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        with _LOCK, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def record(self, kind: str, id: str, name: str, provider: str, **meta: Any) -> dict[str, Any]:
        """Record a created (or about-to-be-created) resource. Call this before waiting on it."""
        entry = {
            "event": "created",
            "kind": kind,
            "id": id,
            "name": name,
            "provider": provider,
            "time": _now(),
            "meta": meta,
        }
        handler = handler_name(kind)
        if handler:
            entry["handler"] = handler  # how to delete it, for a teardown in another process
        self._append(entry)
        return entry

    def deleted(self, kind: str, id: str, **meta: Any) -> None:
        """Record that a resource is gone (deleted, or found missing)."""
        self._append({"event": "deleted", "kind": kind, "id": id, "time": _now(), "meta": meta})

    def failed(self, kind: str, id: str, error: str) -> None:
        self._append(
            {"event": "teardown_failed", "kind": kind, "id": id, "time": _now(), "meta": {"error": error}}
        )

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a kill mid-write: the rest of the ledger still counts
        return out

    def live(self) -> list[dict[str, Any]]:
        """Resources created and not yet deleted, in creation order."""
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for e in self.entries():
            key = (e["kind"], e["id"])
            if e["event"] == "created":
                live[key] = e
            elif e["event"] == "deleted":
                live.pop(key, None)
        return list(live.values())


@dataclass
class TeardownReport:
    deleted: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"teardown: {len(self.deleted)} deleted, {len(self.failed)} failed"]
        lines += [f"  FAILED {e['kind']} {e['name']} ({e['id']}): {err}" for e, err in self.failed]
        return "\n".join(lines)


def teardown_run(run_dir: Path | str) -> TeardownReport:
    """Delete every live resource of the run, newest first; never stops at the first failure."""
    ledger = Ledger(Path(run_dir))
    report = TeardownReport()
    for entry in reversed(ledger.live()):
        try:
            _resolve(entry["kind"], entry)(entry, ledger.run_dir)
        except Exception as exc:  # noqa: BLE001 - every resource gets its turn; failures are reported
            ledger.failed(entry["kind"], entry["id"], f"{type(exc).__name__}: {exc}")
            report.failed.append((entry, f"{type(exc).__name__}: {exc}"))
            continue
        ledger.deleted(entry["kind"], entry["id"])
        report.deleted.append(entry)
    return report


def release(run_dir: Path | str, kind: str, resource_id: str) -> None:
    """Delete one live resource now through its handler and record it; unknown or already deleted: nothing to do."""
    ledger = Ledger(Path(run_dir))
    for entry in ledger.live():
        if entry["kind"] == kind and entry["id"] == resource_id:
            _resolve(kind, entry)(entry, ledger.run_dir)
            ledger.deleted(kind, resource_id)
            return


# --- built-in handlers --------------------------------------------------------------------------------------


def kill_local_process(entry: dict[str, Any], run_dir: Path) -> None:
    """Terminate a local process group started by r1lab (meta: pid, pgid). Gone already counts as done."""
    from r1lab.execution import kill_group

    kill_group(int(entry["meta"].get("pgid") or entry["id"]), grace=5.0)


def touch_marker(entry: dict[str, Any], run_dir: Path) -> None:
    """Test resource: its teardown appends a line to the file named in meta.path (proves teardown ran)."""
    with open(entry["meta"]["path"], "a", encoding="utf-8") as f:
        f.write(f"torn down {entry['id']}\n")


register("local-process", kill_local_process)
register("test-marker", touch_marker)
