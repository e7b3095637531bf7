"""Heartbeats to the pods' watchdogs while the process that uses the pods lives.

Every pod's start script runs a watchdog that removes the pod when no heartbeat came for
`provider.heartbeat_timeout_s` (r1lab.cloud.pods.start_script). `keep_alive(run_dir, pod_id, ssh)` registers a
pod with this process's one daemon thread, which touches the pod's heartbeat file every `INTERVAL_S` over SSH
for as long as the pod is live in the run's ledger. So a vanished controller (a closed laptop, a SIGKILL, a
dropped connection) costs minutes of GPU time, not the hours until the pod's hard deadline.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from r1lab.cloud.pods import heartbeat
from r1lab.teardown import Ledger

INTERVAL_S = 60.0

_LOCK = threading.Lock()
_PODS: dict[str, tuple[Path, Any]] = {}  # pod id -> (run dir, PodSSH)
_THREAD: threading.Thread | None = None
_WAKE = threading.Event()


def keep_alive(run_dir: Path | str, pod_id: str, ssh: Any) -> None:
    """Send `pod_id` heartbeats through `ssh` (a PodSSH) from now on, while the pod is live in the ledger."""
    global _THREAD
    with _LOCK:
        _PODS[pod_id] = (Path(run_dir), ssh)
        if _THREAD is None or not _THREAD.is_alive():
            _THREAD = threading.Thread(target=_loop, name="r1lab-pod-heartbeat", daemon=True)
            _THREAD.start()


def beat_once() -> dict[str, str]:
    """One round: a heartbeat to every registered pod still live in its ledger; returns pod id -> outcome."""
    with _LOCK:
        pods = dict(_PODS)
    outcome: dict[str, str] = {}
    for pod_id, (run_dir, ssh) in pods.items():
        live = Ledger(run_dir).live()
        pods_live = {e["id"] for e in live if e["kind"] == "runpod-pod"}
        cluster_live = any(e["kind"] == "runpod-cluster" for e in live)  # its member pods are not listed
        if pod_id not in pods_live and not cluster_live:
            with _LOCK:
                _PODS.pop(pod_id, None)
            outcome[pod_id] = "gone"
            continue
        try:
            heartbeat(ssh)
            outcome[pod_id] = "ok"
        except Exception as exc:  # noqa: BLE001 - one missed beat is within the watchdog's slack
            outcome[pod_id] = f"missed: {type(exc).__name__}"
    return outcome


def _loop() -> None:
    while True:
        _WAKE.wait(INTERVAL_S)
        _WAKE.clear()
        beat_once()
        with _LOCK:
            if not _PODS:
                return
