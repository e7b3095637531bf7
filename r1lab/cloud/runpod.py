"""A small synchronous client for RunPod's REST API v2 (spec: r1lab/data/runpod/openapi-v2.json).

Synchronous on purpose: notebook cells, teardown handlers (called from `finally` and signal handlers) and the
`r1lab reap` command all call it, and none of them should need an event loop; the calls are few and slow
(seconds apart), so threads cover the rare parallel wait. Standard library only (urllib).

Configuration: `RUNPOD_API_BASE` (default `https://api.runpod.io`, the spec's server; paths are `/v2/...`) and
`RUNPOD_API_KEY` (read through r1lab.secrets at the point of use, sent only in the Authorization header).

Retry rules (facts.md, the spec's createPod notes): GET/PUT/DELETE retry on 5xx, 429 and network errors with
exponential backoff; POST retries only on 429, honouring Retry-After; after a 5xx (or a lost answer) on create,
the pod is looked up by name before anything else, and only re-created when it is not there.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from r1lab.cloud.errors import (
    CloudError,
    NetworkError,
    NoCapacityError,
    NotFoundError,
    PodFailedError,
    RateLimitedError,
    ReadyTimeoutError,
    RequestRejectedError,
    RunPodAPIError,
    TransientError,
    VolumeDataCenterError,
    is_capacity_refusal,
)
from r1lab.secrets import get_secret, redact

DEFAULT_API_BASE = "https://api.runpod.io"
TERMINAL_STATES = frozenset({"ERROR", "EXITED", "TERMINATED"})
# wait_ready polls every 0.5 s (at most) for its first 10 s, then every `poll_s`: a pod that comes up fast (a cached
# image, the twin) is noticed within half a second, not up to a whole poll later; ~20 extra requests per pod,
# against RunPod's 600 a minute
EARLY_POLL_S, EARLY_FOR_S = 0.5, 10.0


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.5
    max_s: float = 20.0
    max_retry_after_s: float = 120.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * 2**attempt) * (0.5 + random.random() / 2)


@dataclass
class PodSpec:
    """What to create; `to_request()` gives the exact CreatePodRequest body. A pod without `gpu_type` is a CPU
    pod (`cpu_flavor` x `vcpu_count`); the combinations RunPod refuses are refused here, before any request."""

    name: str
    image: str
    gpu_type: str | None = None
    gpu_count: int = 1
    cpu_flavor: str = "cpu3c"
    vcpu_count: int = 4
    cloud: str = "SECURE"
    data_centers: list[str] = field(default_factory=list)
    volume_id: str | None = None
    volume_mount: str = "/workspace"
    ports: list[str] = field(default_factory=lambda: ["22/tcp"])
    env: dict[str, str] = field(default_factory=dict)
    args: str | None = None
    disk_gb: int = 50
    global_networking: bool = False
    start_ssh: bool = True

    def __post_init__(self) -> None:
        if not self.gpu_type:
            if self.global_networking:
                raise ValueError(
                    f"pod {self.name}: global networking needs an NVIDIA GPU pod (RunPod refuses it on CPU pods). "
                    "Fix: set gpu_type, or global_networking=False (provider.network in the params file)."
                )
            if self.vcpu_count < 2 or self.vcpu_count & (self.vcpu_count - 1):
                raise ValueError(f"pod {self.name}: vcpu_count {self.vcpu_count} must be a power of two >= 2")

    def to_request(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "cloud": self.cloud,
            "disk": self.disk_gb,
            "ports": list(self.ports),
            "env": dict(self.env),
            "startSsh": self.start_ssh,
        }
        if self.gpu_type:
            body["gpu"] = {"id": self.gpu_type, "count": self.gpu_count}
        else:
            body["cpu"] = {"id": self.cpu_flavor, "vcpuCount": self.vcpu_count}
        if self.data_centers:
            body["dataCenterIds"] = list(self.data_centers)
        if self.volume_id:
            body["mounts"] = {"network": [{"volumeId": self.volume_id, "path": self.volume_mount}]}
        if self.args:
            body["args"] = self.args
        if self.global_networking:
            body["globalNetworking"] = True
        return body


@dataclass
class SshEndpoint:
    host: str
    port: int
    username: str


def ssh_endpoint(pod: dict[str, Any]) -> SshEndpoint | None:
    """The pod's direct SSH endpoint (22/tcp published), or None while it has none."""
    direct = (pod.get("ssh") or {}).get("direct")
    if direct:
        return SshEndpoint(direct["host"], int(direct["port"]), direct["username"])
    return None


def public_port(pod: dict[str, Any], private: int) -> tuple[str, int] | None:
    """(ip, public port) of a published TCP port of a running pod, or None."""
    for p in ((pod.get("runtime") or {}).get("ports")) or []:
        if p.get("private") == private and p.get("public") and p.get("ip"):
            return p["ip"], int(p["public"])
    return None


class RunPodClient:
    """RunPod REST v2. Every method raises a subclass of CloudError with a one-line, secret-free message."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._api_key = api_key
        self.base_url = (base_url or os.environ.get("RUNPOD_API_BASE") or DEFAULT_API_BASE).rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._log = log
        self.rate_limit: str | None = None  # last RateLimit header seen

    # --- transport ------------------------------------------------------------------------------------------

    def _key(self) -> str:
        key = self._api_key or get_secret("RUNPOD_API_KEY")
        if not key:
            raise CloudError(
                "RUNPOD_API_KEY is not set. Fix: export RUNPOD_API_KEY=<key> in the environment that runs r1lab "
                "(never in a params file)."
            )
        return key

    def _note(self, text: str) -> None:
        if self._log:
            self._log(redact(text))

    def _send(
        self, method: str, path: str, body: Any, params: dict[str, Any] | None
    ) -> tuple[int, Any, dict[str, str]]:
        url = self.base_url + path
        if params:
            query = {
                k: ",".join(v)
                if isinstance(v, list | tuple)
                else (str(v).lower() if isinstance(v, bool) else v)
                for k, v in params.items()
                if v is not None
            }
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._key()}")
        req.add_header("Accept", "application/json, application/problem+json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status, raw, headers = resp.status, resp.read(), dict(resp.headers.items())
        except urllib.error.HTTPError as exc:
            status, raw, headers = exc.code, exc.read(), dict(exc.headers.items())
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NetworkError(f"RunPod {method} {path}: cannot reach {self.base_url}: {reason}") from None
        if "RateLimit" in headers:
            self.rate_limit = headers["RateLimit"]
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
        return status, parsed, headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        operation: str | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> Any:
        """One API call with the retry rules of its method; returns the parsed JSON body (None for 204)."""
        op = operation or f"{method} {path}"
        idempotent = method in ("GET", "PUT", "DELETE")
        waited_retry_after = 0.0
        attempt = 0
        while True:
            try:
                status, parsed, headers = self._send(method, path, body, params)
            except NetworkError:
                if not idempotent or attempt + 1 >= self.retry.attempts:
                    raise
                delay = self.retry.backoff(attempt)
                self._note(f"{op}: network error, retry {attempt + 1} in {delay:.1f}s")
                self._sleep(delay)
                attempt += 1
                continue
            if status in ok:
                return parsed
            error = RunPodAPIError.from_problem(status, parsed, op, headers)
            retryable = status == 429 or (idempotent and status >= 500)
            if not retryable or attempt + 1 >= self.retry.attempts:
                raise error
            if status == 429:
                delay = _retry_after(headers, self.retry.backoff(attempt))
                waited_retry_after += delay
                if waited_retry_after > self.retry.max_retry_after_s:
                    raise error
            else:
                delay = self.retry.backoff(attempt)
            self._note(f"{op}: HTTP {status}, retry {attempt + 1} in {delay:.1f}s")
            self._sleep(delay)
            attempt += 1

    # --- catalog --------------------------------------------------------------------------------------------

    def list_gpu_types(
        self, availability: bool = True, count: int | None = None, cloud: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        if availability:
            params = {"include": "AVAILABILITY", "product": "POD", "count": count, "cloud": cloud}
        return self.request("GET", "/v2/catalog/gpus", params=params, operation="listGpuTypes")["gpus"]

    def list_data_centers(self, gpu_availability: bool = False) -> list[dict[str, Any]]:
        params = {"include": "GPU_AVAILABILITY"} if gpu_availability else None
        return self.request("GET", "/v2/catalog/datacenters", params=params, operation="listDataCenters")[
            "dataCenters"
        ]

    def capacity_alternatives(self, gpu: str, count: int, cloud: str, exclude_dc: list[str]) -> list[str]:
        """Where this GPU (or one with at least as much memory) has stock now, as readable strings."""
        try:
            gpus = self.list_gpu_types(availability=True, count=count, cloud=cloud)
        except CloudError:
            return []
        wanted = next((g for g in gpus if g["id"] == gpu), None)
        min_mem = wanted["memory"] if wanted else 0
        out: list[str] = []
        ranked = sorted(gpus, key=lambda g: (g["id"] != gpu, g["memory"]))
        for g in ranked:
            if g["memory"] < min_mem:
                continue
            for dc in g.get("dataCenters") or []:
                if dc["availability"] != "NONE" and not (g["id"] == gpu and dc["id"] in exclude_dc):
                    out.append(f"{g['id']} in {dc['id']} ({dc['availability']})")
        return out

    # --- SSH keys -------------------------------------------------------------------------------------------

    def get_ssh_keys(self) -> list[str]:
        return self.request("GET", "/v2/account/ssh-keys", operation="getSshKeys")["keys"]

    def set_ssh_keys(self, keys: list[str]) -> list[str]:
        return self.request("PUT", "/v2/account/ssh-keys", {"keys": keys}, operation="updateSshKeys")["keys"]

    def ensure_ssh_key(self, public_key: str) -> None:
        """Register a public key without dropping the account's others (PUT replaces the whole set)."""
        public_key = public_key.strip()
        fields = public_key.split()
        keys = self.get_ssh_keys()
        if any(k.split()[:2] == fields[:2] for k in keys):
            return
        self.set_ssh_keys([*keys, public_key])

    def remove_ssh_key(self, public_key: str) -> None:
        fields = public_key.strip().split()[:2]
        keys = self.get_ssh_keys()
        kept = [k for k in keys if k.split()[:2] != fields]
        if kept != keys:
            self.set_ssh_keys(kept)

    # --- network volumes ------------------------------------------------------------------------------------

    def list_volumes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v2/network-volumes", operation="listNetworkVolumes")["networkVolumes"]

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v2/network-volumes/{_q(volume_id)}", operation="getNetworkVolume")

    def find_volumes(self, name: str) -> list[dict[str, Any]]:
        return [v for v in self.list_volumes() if v["name"] == name]

    def create_volume(
        self, name: str, size_gb: int, data_center: str, volume_type: str | None = None
    ) -> dict[str, Any]:
        """Create a network volume. Names are not unique on RunPod, so callers look up first (see ensure)."""
        body: dict[str, Any] = {"name": name, "size": size_gb, "dataCenter": data_center}
        if volume_type:
            body["type"] = volume_type
        try:
            return self.request("POST", "/v2/network-volumes", body, operation="createNetworkVolume")
        except (TransientError, NetworkError):
            found = self._find_after_lost_create(self.find_volumes, name)
            if found:
                return found
            raise

    def delete_volume(self, volume_id: str) -> bool:
        """Delete; returns False when it was already gone (which counts as done)."""
        try:
            self.request("DELETE", f"/v2/network-volumes/{_q(volume_id)}", operation="deleteNetworkVolume")
        except NotFoundError:
            return False
        return True

    # --- pods -----------------------------------------------------------------------------------------------

    def list_pods(self, include_cluster_pods: bool = False) -> list[dict[str, Any]]:
        params = {"includeClusterPods": True} if include_cluster_pods else None
        return self.request("GET", "/v2/pods", params=params, operation="listPods")["pods"]

    def get_pod(self, pod_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v2/pods/{_q(pod_id)}", operation="getPod")

    def find_pods(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.list_pods() if p["name"] == name]

    def create_pod(self, spec: PodSpec, check_volume: bool = True) -> dict[str, Any]:
        """Create a pod. Checks the volume's data center first; maps capacity refusals to NoCapacityError."""
        if spec.volume_id and check_volume:
            volume = self.get_volume(spec.volume_id)
            if not spec.data_centers:
                spec.data_centers = [volume["dataCenter"]]
            elif volume["dataCenter"] not in spec.data_centers:
                raise VolumeDataCenterError(spec.volume_id, volume["dataCenter"], spec.data_centers)
        body = spec.to_request()
        attempts = 0
        while True:
            try:
                return self.request("POST", "/v2/pods", body, operation="createPod")
            except (TransientError, NetworkError) as exc:
                # The pod may exist although the answer was lost: look it up by name before anything else.
                found = self._find_after_lost_create(self.find_pods, spec.name)
                if found:
                    self._note(f"createPod: {type(exc).__name__}, but pod {spec.name} exists: {found['id']}")
                    return found
                attempts += 1
                if attempts >= self.retry.attempts:
                    raise
                self._sleep(self.retry.backoff(attempts))
            except RunPodAPIError as exc:
                if exc.status != 400:
                    raise
                if is_capacity_refusal(exc):
                    gpu = spec.gpu_type or f"CPU {spec.cpu_flavor}"
                    raise NoCapacityError(
                        gpu,
                        spec.gpu_count if spec.gpu_type else spec.vcpu_count,
                        spec.data_centers,
                        spec.cloud,
                        exc.detail,
                        self.capacity_alternatives(gpu, spec.gpu_count, spec.cloud, spec.data_centers)
                        if spec.gpu_type
                        else [],
                    ) from None
                if spec.volume_id and spec.data_centers:  # the volume's own record says where it lives
                    try:
                        volume_dc = self.get_volume(spec.volume_id)["dataCenter"]
                    except CloudError:
                        volume_dc = None
                    if volume_dc and volume_dc not in spec.data_centers:
                        raise VolumeDataCenterError(spec.volume_id, volume_dc, spec.data_centers) from None
                raise RequestRejectedError(
                    exc.status, exc.title, exc.detail, exc.operation, exc.errors, exc.headers
                ) from None

    def _find_after_lost_create(self, finder: Callable[[str], list[dict[str, Any]]], name: str) -> Any:
        try:
            found = finder(name)
        except CloudError:
            return None
        return found[0] if found else None

    def pod_action(self, pod_id: str, action: str) -> dict[str, Any] | None:
        return self.request(
            "POST", f"/v2/pods/{_q(pod_id)}/action", {"action": action}, operation=f"podAction {action}"
        )

    def terminate_pod(self, pod_id: str) -> bool:
        """Terminate (DELETE); returns False when it was already gone (which counts as done)."""
        try:
            self.request("DELETE", f"/v2/pods/{_q(pod_id)}", operation="deletePod")
        except NotFoundError:
            return False
        return True

    def wait_ready(
        self,
        pod_id: str,
        timeout_s: float = 1800.0,
        probe: Callable[[dict[str, Any], SshEndpoint], None] | None = None,
        poll_s: float = 2.0,
        on_step: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Wait until the pod is RUNNING, has a direct SSH endpoint, accepts TCP on it, and `probe` (e.g. an
        `ssh true`) passes. Fails fast on ERROR/EXITED/TERMINATED; raises ReadyTimeoutError at the deadline."""
        start = time.monotonic()
        deadline = start + timeout_s
        step, last, name = "RUNNING", "", pod_id
        announced = ""
        while True:
            if cancel is not None and cancel.is_set():
                raise CloudError(f"waiting for pod {name} cancelled at '{step}'")
            try:
                pod = self.get_pod(pod_id)
            except NotFoundError:
                raise PodFailedError(pod_id, name, "TERMINATED (gone)", step) from None
            name, status = pod.get("name", pod_id), pod["status"]
            last = f"status {status}"
            if status in TERMINAL_STATES:
                raise PodFailedError(pod_id, name, status, step)
            if status == "RUNNING":
                step = "SSH endpoint"
                ep = ssh_endpoint(pod)
                if ep is not None:
                    step = "TCP connect"
                    try:
                        connect_s = max(0.2, min(5.0, deadline - time.monotonic()))
                        with socket.create_connection((ep.host, ep.port), timeout=connect_s):
                            pass
                    except OSError as exc:
                        last = f"{ep.host}:{ep.port}: {exc}"
                    else:
                        if probe is None:
                            return pod
                        step = "ssh true"
                        try:
                            probe(pod, ep)
                            return pod
                        except Exception as exc:  # noqa: BLE001 - sshd may still be starting; retried
                            last = f"{type(exc).__name__}: {exc}"
            if step != announced and on_step:
                on_step(step)
                announced = step
            if time.monotonic() >= deadline:
                raise ReadyTimeoutError(pod_id, name, step, time.monotonic() - start, redact(last))
            now = time.monotonic()
            interval = min(poll_s, EARLY_POLL_S) if now - start < EARLY_FOR_S else poll_s
            self._sleep(min(interval, max(0.0, deadline - now)))

    # --- instant clusters -----------------------------------------------------------------------------------

    def create_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an Instant Cluster; a 400 reads as NoCapacityError only when it is RunPod's capacity refusal."""
        try:
            return self.request("POST", "/v2/clusters", body, operation="createCluster")
        except (TransientError, NetworkError):
            found = self._find_after_lost_create(self.find_clusters, body["name"])
            if found:
                return found
            raise
        except RunPodAPIError as exc:
            if exc.status != 400:
                raise
            if is_capacity_refusal(exc):
                compute = body.get("compute") or {}
                per_pod, pods = compute.get("gpuCountPerPod", 1), compute.get("podCount", 1)
                raise NoCapacityError(
                    f"{compute.get('gpuTypeId')} (cluster of {pods} pods)", per_pod * pods,
                    list(body.get("dataCenterIds") or []), "SECURE", exc.detail, None,
                ) from None  # fmt: skip
            raise RequestRejectedError(
                exc.status, exc.title, exc.detail, exc.operation, exc.errors, exc.headers
            ) from None

    def list_clusters(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v2/clusters", operation="listClusters")["clusters"]

    def find_clusters(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.list_clusters() if c["name"] == name]

    def get_cluster(self, cluster_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v2/clusters/{_q(cluster_id)}", operation="getCluster")

    def cluster_pods(self, cluster_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/v2/clusters/{_q(cluster_id)}/pods", operation="listClusterPods")["pods"]

    def delete_cluster(self, cluster_id: str) -> bool:
        try:
            self.request("DELETE", f"/v2/clusters/{_q(cluster_id)}", operation="deleteCluster")
        except NotFoundError:
            return False
        return True


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _retry_after(headers: dict[str, str], default: float) -> float:
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return default
    return default


__all__ = [
    "DEFAULT_API_BASE",
    "PodSpec",
    "RateLimitedError",
    "RetryPolicy",
    "RunPodClient",
    "SshEndpoint",
    "TERMINAL_STATES",
    "public_port",
    "ssh_endpoint",
]
