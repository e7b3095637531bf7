"""An emulator of RunPod's REST API v2 on 127.0.0.1, held to RunPod's own OpenAPI spec.

Every request body is validated against the spec's schema for its operation (422 with `errors` otherwise,
unknown fields included where the spec forbids them); every response the emulator sends is validated against
the schema the spec documents for that status, and a response that does not match is replaced by a 500 and
recorded in `spec_violations` (tests assert there are none). Auth: `Authorization: Bearer <key>`, else an
RFC 9457 401. Pods move PROVISIONING -> STARTING -> RUNNING on a controllable clock; their ports (and so
`ssh.direct`) appear only some time after RUNNING. Faults are injected on demand (see `Fault`).

Control plane (not RunPod's; for tests and the twin), under `/_emulator/`: GET state, POST faults, POST clock
(advance), POST config (timings), POST stock (free GPUs per data center), POST reset-faults.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from r1lab.cloud.emulator.backends import PodBackend, RecordOnlyBackend
from r1lab.cloud.emulator.catalog import (
    CAPACITY_DETAIL,
    CPU_CATALOG,
    DATA_CENTERS,
    GPU_CATALOG,
    cpu_flavor,
    cuda_ok,
    data_center,
    gpu_type,
)
from r1lab.cloud.emulator.ratelimit import DEFAULT_POLICY, RateLimiter
from r1lab.cloud.emulator.spec import Spec, load_spec


def _data_center(dc_id: str) -> dict[str, Any]:
    """The catalog's record of a data center the emulator itself picked (so it exists)."""
    dc = data_center(dc_id)
    assert dc is not None, dc_id
    return dc


class Clock:
    """Epoch seconds that run at `speed` x real time and can be pushed forward by `advance`."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._base = time.time()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._base + (time.monotonic() - self._t0) * self.speed + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


@dataclass
class Timings:
    provision_s: float = 2.0  # PROVISIONING -> STARTING
    start_s: float = 1.0  # STARTING -> RUNNING
    ports_delay_s: float = 1.0  # RUNNING -> runtime.ports / ssh.direct present


@dataclass
class Fault:
    """One injected fault. `op` is an operationId (createPod, getPod, listPods, deletePod, ...) or '*'.

    kinds: rate_limit (429 + Retry-After), server_error (500 before doing anything), server_error_after_create
    (the resource is created, then 500), disconnect_after_create (created, then the connection is dropped),
    no_capacity (400 'no instances available'), pod_error (the next pods go ERROR instead of RUNNING),
    stuck_provisioning (the next pods never leave PROVISIONING)."""

    kind: str
    op: str = "*"
    times: int = 1
    retry_after: int = 1
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    hits: int = 0


FAULT_KINDS = {
    "rate_limit",
    "server_error",
    "server_error_after_create",
    "disconnect_after_create",
    "no_capacity",
    "pod_error",
    "stuck_provisioning",
}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(14))


class ApiError(Exception):
    def __init__(
        self, status: int, detail: str, errors: list[str] | None = None, headers: dict | None = None
    ):
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers or {}
        super().__init__(detail)


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    414: "URI Too Long",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


class Emulator:
    """State, clock, faults and the HTTP server. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        api_key: str,
        backend: PodBackend | None = None,
        timings: Timings | None = None,
        clock: Clock | None = None,
        state_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        stock: int = 16,
        spec: Spec | None = None,
        rate_limits: tuple[tuple[str, int, int], ...] | list | None = DEFAULT_POLICY,
    ) -> None:
        """`rate_limits`: (window name, quota, seconds) per window, counted per API key on the emulator's clock
        (default: the quota the emulator announces, 600/minute, 30,000/hour, 500,000/day); () turns it off."""
        self.api_key = api_key
        self.backend = backend or RecordOnlyBackend()
        self.timings = timings or Timings()
        self.clock = clock or Clock()
        self.spec = spec or load_spec()
        self.state_dir = Path(state_dir) if state_dir else None
        self.lock = threading.RLock()
        self.pods: dict[str, dict[str, Any]] = {}  # id -> internal record
        self.volumes: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self.ssh_keys: list[str] = []
        self.faults: list[Fault] = []
        self.spec_violations: list[str] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status): what clients did
        self.request_log: list[tuple[float, str, str, int]] = []  # the same, with the clock's time
        self.limiter = RateLimiter(() if rate_limits is None else rate_limits, self.clock.now)
        # free GPUs per (gpu id, data center); both clouds share it
        self.stock: dict[tuple[str, str], int] = {
            (g["id"], d["id"]): stock for g in GPU_CATALOG for d in DATA_CENTERS
        }
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._load()

    # --- lifecycle ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Emulator:
        emulator = self

        class Handler(_Handler):
            emu = emulator

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        t = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="runpod-emulator",
            daemon=True,
        )
        t.start()
        ticker = threading.Thread(target=self._tick_loop, name="runpod-emulator-clock", daemon=True)
        ticker.start()
        self._threads = [t, ticker]
        if self.state_dir:  # whole or absent: whoever waits for this file reads it as soon as it exists
            tmp = self.state_dir / "url.tmp"
            tmp.write_text(self.url + "\n", encoding="utf-8")
            tmp.replace(self.state_dir / "url")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        with self.lock:
            self._save()
        self.backend.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the clock thread must survive a backend's failure
                traceback.print_exc()

    # --- persistence ----------------------------------------------------------------------------------------

    def _save(self) -> None:
        if not self.state_dir:
            return
        state = {
            "pods": {k: {kk: vv for kk, vv in v.items() if kk != "host"} for k, v in self.pods.items()},
            "volumes": self.volumes,
            "clusters": self.clusters,
            "ssh_keys": self.ssh_keys,
            "stock": [[g, d, n] for (g, d), n in self.stock.items()],
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        tmp.replace(self.state_dir / "state.json")

    def _load(self) -> None:
        path = self.state_dir / "state.json" if self.state_dir else None
        if not path or not path.exists():
            return
        state = json.loads(path.read_text(encoding="utf-8"))
        self.pods = state["pods"]
        for rec in self.pods.values():
            rec["host"] = None
            if rec["status"] == "RUNNING":
                rec["restart_backend"] = True
        self.volumes, self.clusters, self.ssh_keys = state["volumes"], state["clusters"], state["ssh_keys"]
        self.stock = {(g, d): n for g, d, n in state["stock"]}

    # --- control plane --------------------------------------------------------------------------------------

    def add_fault(self, kind: str, op: str = "*", times: int = 1, retry_after: int = 1) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        f = Fault(kind=kind, op=op, times=times, retry_after=retry_after)
        with self.lock:
            self.faults.append(f)
        return f

    def _take_fault(self, op: str, kinds: set[str]) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.kind in kinds and f.op in ("*", op) and f.times != 0:
                    f.times -= 1
                    f.hits += 1
                    return f
        return None

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "pods": [self.render_pod(r) for r in self.pods.values()],
                "volumes": list(self.volumes.values()),
                "clusters": [self.render_cluster(c) for c in self.clusters.values()],
                "ssh_keys": list(self.ssh_keys),
                "faults": [asdict(f) for f in self.faults],
                "spec_violations": list(self.spec_violations),
                "now": self.clock.now(),
                "timings": asdict(self.timings),
                "backend_running": list(getattr(self.backend, "running", list)()),
            }

    # --- pod state machine ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance every pod to the state its timestamps and the clock say it is in."""
        with self.lock:
            records = list(self.pods.values())
        for rec in records:
            self._advance(rec)

    def _advance(self, rec: dict[str, Any]) -> None:
        now = self.clock.now()
        start_backend = False
        with self.lock:
            status = rec["status"]
            if (
                status == "PROVISIONING"
                and rec["fault"] != "stuck"
                and now >= rec["since"] + self.timings.provision_s
            ):
                rec.update(status="STARTING", since=rec["since"] + self.timings.provision_s)
                status = "STARTING"
            if status == "STARTING" and now >= rec["since"] + self.timings.start_s:
                if rec["fault"] == "error":
                    self._set_status(rec, "ERROR", rec["since"] + self.timings.start_s)
                elif not rec.get("starting_backend"):
                    rec["starting_backend"] = True
                    start_backend = True
            if status == "RUNNING" and rec.pop("restart_backend", False):
                rec["starting_backend"] = True
                start_backend = True
        if not start_backend:
            return
        try:
            host = self.backend.start(self.backend_pod(rec), rec["public_keys"])
        except Exception as exc:  # noqa: BLE001 - a backend failure is the pod's ERROR, as on RunPod
            with self.lock:
                rec["backend_error"] = f"{type(exc).__name__}: {exc}"
                rec.pop("starting_backend", None)
                self._set_status(rec, "ERROR", self.clock.now())
            return
        with self.lock:
            rec.pop("starting_backend", None)
            if rec["status"] not in ("STARTING", "RUNNING"):  # stopped or terminated meanwhile
                self.backend.stop(rec["id"])
                return
            rec["host"] = asdict(host)
            if rec["status"] == "STARTING":
                self._set_status(rec, "RUNNING", max(self.clock.now(), rec["since"]))
                rec["started_at"] = rec["since"]
            self._save()

    def _set_status(self, rec: dict[str, Any], status: str, since: float) -> None:
        rec["status"], rec["since"] = status, since
        if status in ("EXITED", "ERROR", "TERMINATED"):
            rec["host"] = None
            self._release(rec)
        self._save()

    def _release(self, rec: dict[str, Any]) -> None:
        if rec.get("holds_stock"):
            key = (rec["gpu"]["id"], rec["dataCenterId"])
            self.stock[key] = self.stock.get(key, 0) + rec["gpu"]["count"]
            rec["holds_stock"] = False

    def _allocate(self, gpu: dict[str, Any] | None, wanted_dcs: list[str], cuda: tuple | None = None) -> str:
        """Pick a data center with free GPUs (on a host whose CUDA version meets `cuda` = (allowed, minimum));
        raise RunPod's capacity 400 when there is none."""
        dcs = wanted_dcs or [d["id"] for d in DATA_CENTERS]
        if gpu is None:
            return dcs[0]
        for dc in dcs:
            if cuda and not any(cuda_ok(v, *cuda) for v in _data_center(dc)["cuda"]):
                continue
            if self.stock.get((gpu["id"], dc), 0) >= gpu.get("count", 1):
                self.stock[(gpu["id"], dc)] -= gpu.get("count", 1)
                return dc
        raise ApiError(400, CAPACITY_DETAIL)

    # --- rendering (spec shapes) ----------------------------------------------------------------------------

    def render_pod(self, rec: dict[str, Any]) -> dict[str, Any]:
        status = rec["status"]
        now = self.clock.now()
        host = rec.get("host")
        ports_visible = (
            status == "RUNNING" and host is not None and now >= rec["since"] + self.timings.ports_delay_s
        )
        runtime = None
        direct = None
        if status == "RUNNING":
            rports = []
            if ports_visible and host is not None:
                for spec_port, public in host["ports"].items():
                    private, _, kind = spec_port.partition("/")
                    rports.append({"private": int(private), "public": public, "type": kind, "ip": host["ip"]})
                    if spec_port == "22/tcp":
                        direct = {
                            "host": host["ip"],
                            "port": public,
                            "username": host["username"],
                            "command": f"ssh {host['username']}@{host['ip']} -p {public}",
                        }
            runtime = {"uptime": int(max(0.0, now - (rec.get("started_at") or now))), "ports": rports}
            if rec.get("gpu"):
                runtime["gpus"] = [{"util": 0, "memoryUtil": 0} for _ in range(rec["gpu"]["count"])]
        gn: dict[str, Any] = {"enabled": bool(rec["globalNetworking"])}
        if rec["globalNetworking"]:
            gn["ip"] = (host or {}).get("private_ip") or rec["gn_ip"]
            gn["internalDns"] = f"{rec['id']}.runpod.internal"
        actions = {
            "PROVISIONING": ["stop", "terminate"],
            "STARTING": ["stop", "terminate"],
            "RUNNING": ["stop", "restart", "terminate"],
            "EXITED": ["start", "terminate"],
            "ERROR": ["start", "terminate"],
            "TERMINATED": [],
        }[status]
        pod: dict[str, Any] = {
            "id": rec["id"],
            "name": rec["name"],
            "status": status,
            "actions": actions,
            "image": rec["image"],
            "args": rec["args"],
            "disk": rec["disk"],
            "mounts": rec["mounts"],
            "ports": rec["ports"],
            "env": rec["env"],
            "registry": None,
            "cloud": rec["cloud"],
            "dataCenterId": rec["dataCenterId"],
            "cudaVersion": rec.get("cuda", "12.8") if rec.get("gpu") else None,
            "ssh": {"proxy": self._proxy(rec), "direct": direct},
            "template": None,
            "cost": self._pod_cost(rec) if status in ("PROVISIONING", "STARTING", "RUNNING") else 0.0,
            "locked": False,
            "runtime": runtime,
            "createdAt": _iso(rec["created"]),
            "startedAt": _iso(rec.get("started_at")),
            "globalNetworking": gn,
        }
        if rec.get("gpu"):
            pod["gpu"] = dict(rec["gpu"])
        if rec.get("cpu"):
            pod["cpu"] = dict(rec["cpu"])
        if rec.get("cluster"):  # PodCluster (additionalProperties: false): id, rank, role, ip
            pod["cluster"] = {k: v for k, v in rec["cluster"].items() if k in ("id", "rank", "role", "ip")}
        return pod

    def backend_pod(self, rec: dict[str, Any]) -> dict[str, Any]:
        """What the backend starts: the pod as the API renders it, plus what RunPod's host knows of a cluster
        member and the API does not show: the cluster's size (`nodes`), from which RunPod injects NUM_NODES and
        WORLD_SIZE (docs: instant-clusters/configuration)."""
        pod = self.render_pod(rec)
        if rec.get("cluster") and rec.get("cluster_nodes"):
            pod["cluster"]["nodes"] = int(rec["cluster_nodes"])
        return pod

    @staticmethod
    def _proxy(rec: dict[str, Any]) -> dict[str, Any]:
        """RunPod's SSH proxy endpoint: filled from the machine assignment on (recorded v2 answers carry it even
        while `direct` is still null). An interactive shell only; r1lab never uses it."""
        user = rec.get("proxy_user") or f"{rec['id']}-{rec['id'][:8]}"
        return {"host": "ssh.runpod.io", "port": 22, "username": user, "command": f"ssh {user}@ssh.runpod.io"}

    def _pod_cost(self, rec: dict[str, Any]) -> float:
        if rec.get("gpu"):
            g = gpu_type(rec["gpu"]["id"])
            per = g["price"]["secure" if rec["cloud"] == "SECURE" else "community"] if g else 0.0
            return round(per * rec["gpu"]["count"], 4)
        flavor = cpu_flavor(rec["cpu"]["id"])
        return round((flavor["price"]["securePerVcpu"] if flavor else 0.0) * rec["cpu"]["vcpuCount"], 4)

    def render_cluster(self, c: dict[str, Any]) -> dict[str, Any]:
        members = [self.pods[p] for p in c["pod_ids"] if p in self.pods]
        by_status: dict[str, int] = {}
        for m in members:
            by_status[m["status"]] = by_status.get(m["status"], 0) + 1
        out: dict[str, Any] = {
            "id": c["id"],
            "name": c["name"],
            "type": c["type"],
            "compute": c["compute"],
            "pods": {"total": len(members), "byStatus": by_status},
            "createdAt": _iso(c["created"]),
            "dataCenterId": c["dataCenterId"],
            "network": {"cidr": "10.65.0.0/16"},
        }
        primary = next((m for m in members if m["cluster"]["rank"] == 0), None)
        if primary:
            out["primary"] = {"podId": primary["id"], "status": primary["status"]}
            ep = self.render_pod(primary)["ssh"]["direct"]
            if ep:
                out["primary"]["sshEndpoint"] = f"{ep['host']}:{ep['port']}"
        return out

    # --- operations -----------------------------------------------------------------------------------------

    def check_pod_rules(self, body: dict[str, Any]) -> None:
        """The rules the spec states in prose for a create body that matches its schema (400 each, as RunPod's
        handler answers), and the references it names (a template that does not exist: 404)."""
        if ("gpu" in body) == ("cpu" in body):
            raise ApiError(400, "exactly one of gpu or cpu must be set")
        mounts = body.get("mounts") or {}
        if "persistent" in mounts and "network" in mounts:
            raise ApiError(400, "mounts.persistent and mounts.network are mutually exclusive")
        for port in body.get("ports") or []:
            number, _, proto = port.partition("/")
            if not (number.isdigit() and 1 <= int(number) <= 65535 and proto in ("tcp", "http")):
                raise ApiError(
                    400,
                    f"invalid port {port!r}: ports are formatted as port/protocol, e.g. 22/tcp or 8888/http",
                )
        if body.get("templateId"):
            raise ApiError(404, f"template {body['templateId']} not found")
        cloud = body.get("cloud", "SECURE").lower()
        if gpu := body.get("gpu"):
            if gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
                raise ApiError(400, "allowedCudaVersions and minCudaVersion are mutually exclusive")
            g = gpu_type(gpu["id"])
            if g is None:
                raise ApiError(400, f"unknown GPU type {gpu['id']!r}: see GET /v2/catalog/gpus")
            if gpu.get("count", 1) > g["maxCount"][cloud]:
                raise ApiError(
                    400,
                    f"gpu.count {gpu['count']} is above the maximum of {g['maxCount'][cloud]} for {g['id']} on {cloud} cloud",
                )
        if cpu := body.get("cpu"):
            if body.get("globalNetworking"):
                raise ApiError(
                    400, "global networking requires an NVIDIA GPU: it is not available on CPU pods"
                )
            if "persistent" in mounts:
                raise ApiError(400, "mounts.persistent is invalid on CPU pods: use a network volume")
            flavor = cpu_flavor(cpu["id"])
            if flavor is None:
                raise ApiError(400, f"unknown CPU flavor {cpu['id']!r}: see GET /v2/catalog/cpus")
            n, lo, hi = cpu["vcpuCount"], flavor["vcpu"]["min"], flavor["vcpu"]["max"]
            if n & (n - 1):
                raise ApiError(400, f"cpu.vcpuCount {n} must be a power of two")
            if not lo <= n <= hi:
                raise ApiError(400, f"cpu.vcpuCount {n} is not valid for CPU flavor {cpu['id']} ({lo}..{hi})")
        unknown = [d for d in body.get("dataCenterIds") or [] if data_center(d) is None]
        if unknown:
            raise ApiError(400, f"unknown data center(s): {', '.join(unknown)}")

    def create_pod(self, body: dict[str, Any], cluster: dict[str, Any] | None = None) -> dict[str, Any]:
        self.check_pod_rules(body)
        mounts = body.get("mounts") or {}
        gpu = body.get("gpu")
        wanted = list(body.get("dataCenterIds") or [])
        for m in mounts.get("network") or []:
            vol = self.volumes.get(m["volumeId"])
            if vol is None:
                raise ApiError(400, f"network volume {m['volumeId']} not found")
            if wanted and vol["dataCenter"] not in wanted:
                raise ApiError(
                    400,
                    f"network volume {vol['id']} is in data center {vol['dataCenter']}; the pod must be "
                    f"placed in the volume's data center",
                )
            wanted = [vol["dataCenter"]]
        if body.get("globalNetworking"):
            eligible = {d["id"] for d in DATA_CENTERS if d["globalNetwork"]}
            wanted = [d for d in (wanted or sorted(eligible)) if d in eligible]
            if not wanted:
                raise ApiError(400, "global networking is not available in the requested data centers")
        if self._take_fault("createPod", {"no_capacity"}):
            raise ApiError(400, CAPACITY_DETAIL)
        gpu_cfg = {"id": gpu["id"], "count": gpu.get("count", 1)} if gpu else None
        cuda = (gpu.get("allowedCudaVersions") or None, gpu.get("minCudaVersion")) if gpu else None
        dc = self._allocate(gpu_cfg, wanted, cuda)
        host_cuda = max((v for v in _data_center(dc)["cuda"] if not cuda or cuda_ok(v, *cuda)), key=lambda v: tuple(map(int, v.split("."))))  # fmt: skip
        fault = None
        if self._take_fault("createPod", {"stuck_provisioning"}):
            fault = "stuck"
        elif self._take_fault("createPod", {"pod_error"}):
            fault = "error"
        now = self.clock.now()
        pod_id = _new_id()
        cpu = None
        if body.get("cpu"):
            flavor = cpu_flavor(body["cpu"]["id"])
            # the request's CPU type was checked against the catalog
            assert flavor is not None, body["cpu"]["id"]
            memory = max(1, int(body["cpu"]["vcpuCount"] * flavor["ramGbPerVcpu"]))
            cpu = {"id": body["cpu"]["id"], "vcpuCount": body["cpu"]["vcpuCount"], "memory": memory}
        rec = {
            "id": pod_id,
            "name": body["name"],
            "image": body.get("image", ""),
            "args": body.get("args", ""),
            "disk": body.get("disk", 50),
            "mounts": mounts,
            "ports": list(body.get("ports") or []),
            "env": dict(body.get("env") or {}),
            "cloud": body.get("cloud", "SECURE"),
            "dataCenterId": dc,
            "gpu": gpu_cfg,
            "cpu": cpu,
            "cuda": host_cuda,
            "proxy_user": f"{pod_id}-{secrets.token_hex(4)}",
            "globalNetworking": bool(body.get("globalNetworking")),
            "gn_ip": f"10.65.{len(self.pods) // 250}.{len(self.pods) % 250 + 2}",
            "status": "PROVISIONING",
            "since": now,
            "created": now,
            "fault": fault,
            "host": None,
            "holds_stock": gpu_cfg is not None,
            "public_keys": self._pod_keys(body),
            "cluster": cluster,
        }
        self.pods[pod_id] = rec
        self._save()
        return rec

    def _pod_keys(self, body: dict[str, Any]) -> list[str]:
        """The keys a pod's sshd gets (RunPod's PUBLIC_KEY convention): the request's own PUBLIC_KEY if its env sets
        one, else with startSsh the account's registered keys (none registered: no SSH access)."""
        own = (body.get("env") or {}).get("PUBLIC_KEY")
        if own is not None:
            return [k.strip() for k in own.splitlines() if k.strip()]
        return list(self.ssh_keys) if body.get("startSsh") else []

    def pod_or_404(self, pod_id: str, allow_cluster: bool = True) -> dict[str, Any]:
        rec = self.pods.get(pod_id)
        if rec is None or rec["status"] == "TERMINATED":
            raise ApiError(404, "pod not found")
        if rec.get("cluster") and not allow_cluster:
            raise ApiError(409, "pod belongs to a cluster; manage it through /v2/clusters/{id}")
        return rec

    def terminate(self, rec: dict[str, Any]) -> None:
        self._set_status(rec, "TERMINATED", self.clock.now())
        self.backend.terminate(rec["id"])
        del self.pods[rec["id"]]
        self._save()

    def pod_action(self, rec: dict[str, Any], action: str) -> dict[str, Any] | None:
        status = rec["status"]
        if action not in self.render_pod(rec)["actions"]:
            raise ApiError(409, f"action {action} is not valid for a pod in status {status}")
        now = self.clock.now()
        if action == "terminate":
            self.terminate(rec)
            return None
        if action == "stop":
            self.backend.stop(rec["id"])
            self._set_status(rec, "EXITED", now)
        elif action == "start":
            if rec.get("gpu"):
                key = (rec["gpu"]["id"], rec["dataCenterId"])
                if self.stock.get(key, 0) < rec["gpu"]["count"]:
                    raise ApiError(400, CAPACITY_DETAIL)
                self.stock[key] -= rec["gpu"]["count"]
                rec["holds_stock"] = True
            rec["fault"] = None
            self._set_status(rec, "STARTING", now)
        elif action == "restart":
            self.backend.stop(rec["id"])
            rec["host"] = None
            self._set_status(rec, "STARTING", now)
        self._save()
        return rec

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        dc = data_center(body["dataCenter"])
        if dc is None:
            raise ApiError(400, f"unknown data center {body['dataCenter']!r}")
        kind = body.get("type") or dc["networkVolumeTypes"][0]  # omitted: the data center's primary tier
        if kind not in dc["networkVolumeTypes"]:
            raise ApiError(400, f"data center {dc['id']} offers no {kind} network volumes")
        vol = {
            "id": _new_id()[:10],
            "name": body["name"],
            "size": body["size"],
            "dataCenter": body["dataCenter"],
            "type": kind,
        }
        self.volumes[vol["id"]] = vol
        self._save()
        return vol

    def delete_volume(self, volume_id: str) -> None:
        if volume_id not in self.volumes:
            raise ApiError(404, "network volume not found")
        users = [
            r["name"]
            for r in self.pods.values()
            if any(m["volumeId"] == volume_id for m in (r["mounts"].get("network") or []))
        ]
        if users:
            raise ApiError(400, f"network volume {volume_id} is attached to pod(s) {', '.join(users)}")
        del self.volumes[volume_id]
        self._save()

    def create_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        compute = body["compute"]
        g = gpu_type(compute["gpuTypeId"])
        if g is None:
            raise ApiError(400, f"unknown GPU type {compute['gpuTypeId']!r}: see GET /v2/catalog/gpus")
        if not g["cluster"]:
            offered = ", ".join(x["id"] for x in GPU_CATALOG if x["cluster"])
            raise ApiError(400, f"Instant Clusters do not offer {g['id']}; cluster GPU types: {offered}")
        if compute["gpuCountPerPod"] > g["maxCount"]["secure"]:
            raise ApiError(
                400,
                f"compute.gpuCountPerPod {compute['gpuCountPerPod']} is above the maximum of {g['maxCount']['secure']} for {g['id']}",
            )
        cid = "cl" + _new_id()[:12]
        pod_body = {k: v for k, v in body.items() if k in ("image", "args", "disk", "env", "ports", "mounts")}
        pod_body |= {"name": body["name"], "startSsh": body.get("startSsh", False)}
        pod_body["gpu"] = {"id": compute["gpuTypeId"], "count": compute["gpuCountPerPod"]}
        pod_body.setdefault("image", "")
        self.check_pod_rules(pod_body | {"dataCenterIds": body.get("dataCenterIds") or []})
        # a cluster is placed within one data center: its volume's if it mounts one, else one that holds every node
        dcs = list(body.get("dataCenterIds") or []) or [d["id"] for d in DATA_CENTERS]
        for m in (body.get("mounts") or {}).get("network") or []:
            vol = self.volumes.get(m["volumeId"])
            if vol is None:
                raise ApiError(400, f"network volume {m['volumeId']} not found")
            if vol["dataCenter"] not in dcs:
                raise ApiError(
                    400,
                    f"network volume {vol['id']} is in data center {vol['dataCenter']}; the cluster must be "
                    f"placed in the volume's data center",
                )
            dcs = [vol["dataCenter"]]
        need = compute["gpuCountPerPod"] * compute["podCount"]
        dc = next((d for d in dcs if self.stock.get((compute["gpuTypeId"], d), 0) >= need), None)
        if dc is None:
            raise ApiError(400, CAPACITY_DETAIL)
        pod_body["dataCenterIds"] = [dc]
        ids = []
        for rank in range(compute["podCount"]):
            rec = self.create_pod(
                dict(pod_body), cluster={"id": cid, "rank": rank, "ip": f"10.65.0.{rank + 2}"}
            )
            rec["name"] = f"{body['name']}-{rank}"
            rec["cluster_nodes"] = compute["podCount"]
            ids.append(rec["id"])
        c = {
            "id": cid,
            "name": body["name"],
            "type": body["type"],
            "compute": compute,
            "created": self.clock.now(),
            "dataCenterId": dc,
            "pod_ids": ids,
        }
        self.clusters[cid] = c
        self._save()
        return c

    def delete_cluster(self, cid: str) -> None:
        c = self.clusters.get(cid)
        if c is None:
            raise ApiError(404, "cluster not found")
        for pid in c["pod_ids"]:
            if pid in self.pods:
                self.terminate(self.pods[pid])
        del self.clusters[cid]
        self._save()


# --- HTTP ---------------------------------------------------------------------------------------------------

_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    (m, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", p) + "$"), p, op)
    for m, p, op in [
        ("GET", "/v2/account/ssh-keys", "getSshKeys"),
        ("PUT", "/v2/account/ssh-keys", "updateSshKeys"),
        ("GET", "/v2/pods", "listPods"),
        ("POST", "/v2/pods", "createPod"),
        ("GET", "/v2/pods/{id}", "getPod"),
        ("DELETE", "/v2/pods/{id}", "deletePod"),
        ("POST", "/v2/pods/{id}/action", "podAction"),
        ("GET", "/v2/network-volumes", "listNetworkVolumes"),
        ("POST", "/v2/network-volumes", "createNetworkVolume"),
        ("GET", "/v2/network-volumes/{id}", "getNetworkVolume"),
        ("DELETE", "/v2/network-volumes/{id}", "deleteNetworkVolume"),
        ("GET", "/v2/catalog/gpus", "listGpuTypes"),
        ("GET", "/v2/catalog/cpus", "listCpuTypes"),
        ("GET", "/v2/catalog/datacenters", "listDataCenters"),
        ("GET", "/v2/clusters", "listClusters"),
        ("POST", "/v2/clusters", "createCluster"),
        ("GET", "/v2/clusters/{id}", "getCluster"),
        ("DELETE", "/v2/clusters/{id}", "deleteCluster"),
        ("GET", "/v2/clusters/{id}/pods", "listClusterPods"),
    ]
]

_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_SPEC_PATHS: list[tuple[str, re.Pattern[str]]] = [
    (p, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", p) + "$")) for p in load_spec().doc["paths"]
]


def _integral(value: Any) -> Any:
    """JSON numbers with no fraction as ints: JSON Schema's `integer` accepts 2.0, so the API must too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class _Handler(BaseHTTPRequestHandler):
    emu: Emulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # never log request lines: they are not secret, but headers nearby would be

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def __getattr__(self, name: str) -> Any:
        """Any other method (TRACE, OPTIONS, HEAD, FOO...) goes through the same routing: 405 + Allow as JSON."""
        if name.startswith("do_") and name[3:].isupper():
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (malformed request line, oversized headers) in RFC 9457 JSON, not HTML."""
        self.close_connection = True
        body = (
            None
            if getattr(self, "command", None) == "HEAD"
            else self._problem(code, message or explain or "")
        )
        try:
            self._send(code, body, "application/problem+json")
        except OSError:
            pass

    # --- plumbing -------------------------------------------------------------------------------------------

    def _read_body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"request body is not JSON: {exc}") from None

    def _send(
        self, status: int, body: Any, ctype: str = "application/json", headers: dict | None = None
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _problem(self, status: int, detail: str, errors: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
        if errors:
            body["errors"] = errors
        return body

    def _respond(
        self, spec_path: str | None, method: str, status: int, body: Any, headers: dict | None = None
    ) -> None:
        """Validate the response against the spec, then send it (a mismatch becomes a recorded 500)."""
        ctype = "application/json"
        if spec_path is not None:
            emu = self.emu
            try:
                pointer, ctype_spec = emu.spec.response_pointer(spec_path, method, status)
                ctype = ctype_spec or ctype
                problems = (
                    emu.spec.errors(pointer, body)
                    if pointer
                    else (["spec documents no body"] if body is not None else [])
                )
            except KeyError as exc:
                problems = [str(exc)]
            if problems:
                msg = f"{method} {spec_path} -> {status}: " + "; ".join(problems)
                with emu.lock:
                    emu.spec_violations.append(msg)
                status, body, ctype = (
                    500,
                    self._problem(500, "emulator response violates the spec"),
                    ("application/problem+json"),
                )
        with self.emu.lock:
            self.emu.requests.append((method, urlparse(self.path).path, status))
            self.emu.request_log.append((self.emu.clock.now(), method, urlparse(self.path).path, status))
        self._send(status, body, ctype, headers)

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        if url.path.startswith("/_emulator/"):
            return self._control(method, url.path[len("/_emulator/") :])
        route = next(((p, op, m.groupdict()) for rm, rx, p, op in _ROUTES if rm == method and (m := rx.match(url.path))), None)  # fmt: skip
        if route is None:
            return self._no_route(method, url.path)
        spec_path, op, path_args = route
        emu = self.emu
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not secrets.compare_digest(auth[7:].strip(), emu.api_key):
            self._read_body_safely()
            detail = "missing bearer token" if not auth.startswith("Bearer ") else "invalid API key"
            return self._respond(spec_path, method, 401, self._problem(401, detail))
        allowed, rl = emu.limiter.take(emu.api_key)
        if not allowed:
            self._read_body_safely()
            window = next((n for n, q, w in emu.limiter.policy if f'"{n}";r=0;' in rl["RateLimit"]), "minute")
            problem = self._problem(429, f"rate limit exceeded for the {window} window")
            return self._respond(spec_path, method, 429, problem, rl)
        try:
            body = self._read_body()
            fault = emu._take_fault(op, {"rate_limit", "server_error"})
            if fault and fault.kind == "rate_limit":
                headers = rl | {
                    "Retry-After": fault.retry_after,
                    "RateLimit": f'"minute";r=0;t={fault.retry_after}',
                }
                return self._respond(
                    spec_path,
                    method,
                    429,
                    self._problem(429, "rate limit exceeded for the minute window"),
                    headers,
                )
            if fault and fault.kind == "server_error":
                return self._respond(spec_path, method, 500, self._problem(500, "upstream error"), rl)
            query, errors = emu.spec.query(spec_path, method, parse_qs(url.query, keep_blank_values=True))
            req_ptr = emu.spec.request_pointer(spec_path, method)
            if req_ptr is not None:
                if body is None:
                    errors.append("$: request body is required")
                else:
                    errors += emu.spec.errors(req_ptr, body)
            if errors:
                raise ApiError(422, "Request validation failed.", errors)
            status, out = self._operation(op, path_args, query, _integral(body))
        except ApiError as exc:
            return self._respond(
                spec_path,
                method,
                exc.status,
                self._problem(exc.status, exc.detail, exc.errors),
                rl | exc.headers,
            )
        except _Disconnect:
            self.close_connection = True
            return None
        except Exception as exc:  # noqa: BLE001 - report as a 500 problem, keep serving
            traceback.print_exc()
            return self._respond(
                spec_path, method, 500, self._problem(500, f"emulator error: {type(exc).__name__}"), rl
            )
        self._respond(spec_path, method, status, out, rl)

    def _no_route(self, method: str, path: str) -> None:
        """RFC 9457 answers for what no emulated operation serves: a method the path does not have is 405 with
        `Allow` (the spec's methods for it), a spec operation the emulator does not implement is 501, any other
        path 404."""
        self._read_body_safely()
        spec_path = next((p for p, rx in _SPEC_PATHS if rx.match(path)), None)
        if spec_path is None:
            headers: dict[str, str] = {}
            status, detail = 404, f"no resource at {path}"
        else:
            methods = [m.upper() for m in self.emu.spec.doc["paths"][spec_path] if m in _HTTP_METHODS]
            if method in methods:
                op = self.emu.spec.operation(spec_path, method).get("operationId", method)
                status, detail, headers = 501, f"operation {op} is not emulated", {}
            else:
                status, detail = 405, "The requested method is not allowed for this path."
                headers = {"Allow": ", ".join(methods)}
        body = None if method == "HEAD" else self._problem(status, detail)
        self._send(status, body, "application/problem+json", headers)

    def _read_body_safely(self) -> Any:
        try:
            return self._read_body()
        except ApiError:
            return None

    def _operation(self, op: str, args: dict[str, str], query: dict[str, Any], body: Any) -> tuple[int, Any]:
        emu = self.emu
        emu.tick()
        with emu.lock:
            if op == "getSshKeys":
                return 200, {"keys": list(emu.ssh_keys)}
            if op == "updateSshKeys":
                emu.ssh_keys = list(body["keys"])
                emu._save()
                return 200, {"keys": list(emu.ssh_keys)}
            if op == "listPods":
                include = query.get("includeClusterPods", False)
                pods = [emu.render_pod(r) for r in emu.pods.values() if include or not r.get("cluster")]
                return 200, {"pods": pods}
            if op == "createPod":
                rec = emu.create_pod(body)
                self._after_create_faults("createPod")
                return 201, emu.render_pod(rec)
            if op == "getPod":
                return 200, emu.render_pod(emu.pod_or_404(args["id"]))
            if op == "deletePod":
                emu.terminate(emu.pod_or_404(args["id"], allow_cluster=False))
                return 204, None
            if op == "podAction":
                rec = emu.pod_or_404(args["id"], allow_cluster=False)
                out = emu.pod_action(rec, body["action"])
                return (204, None) if out is None else (200, emu.render_pod(out))
            if op == "listNetworkVolumes":
                return 200, {"networkVolumes": list(emu.volumes.values())}
            if op == "createNetworkVolume":
                vol = emu.create_volume(body)
                self._after_create_faults("createNetworkVolume")
                return 201, vol
            if op == "getNetworkVolume":
                found = emu.volumes.get(args["id"])
                if found is None:
                    raise ApiError(404, "network volume not found")
                return 200, found
            if op == "deleteNetworkVolume":
                emu.delete_volume(args["id"])
                return 204, None
            if op == "listGpuTypes":
                return 200, {"gpus": self._gpus(query)}
            if op == "listCpuTypes":
                return 200, {"cpus": self._cpus(query)}
            if op == "listDataCenters":
                return 200, {"dataCenters": self._dcs(query)}
            if op == "listClusters":
                return 200, {"clusters": [emu.render_cluster(c) for c in emu.clusters.values()]}
            if op == "createCluster":
                c = emu.create_cluster(body)
                self._after_create_faults("createCluster")
                return 201, emu.render_cluster(c)
            if op == "getCluster":
                found = emu.clusters.get(args["id"])
                if found is None:
                    raise ApiError(404, "cluster not found")
                return 200, emu.render_cluster(found)
            if op == "listClusterPods":
                found = emu.clusters.get(args["id"])
                if found is None:
                    raise ApiError(404, "cluster not found")
                return 200, {"pods": [emu.render_pod(emu.pods[p]) for p in found["pod_ids"] if p in emu.pods]}
            if op == "deleteCluster":
                emu.delete_cluster(args["id"])
                return 204, None
        raise ApiError(404, f"operation {op} is not emulated")

    def _after_create_faults(self, op: str) -> None:
        fault = self.emu._take_fault(op, {"server_error_after_create", "disconnect_after_create"})
        if fault and fault.kind == "server_error_after_create":
            raise ApiError(500, "upstream error")
        if fault and fault.kind == "disconnect_after_create":
            raise _Disconnect()

    @staticmethod
    def _level(free: int, wanted: int) -> str:
        if free < wanted:
            return "NONE"
        return "HIGH" if free >= 4 * wanted else "MEDIUM" if free >= 2 * wanted else "LOW"

    @staticmethod
    def _availability_params(query: dict[str, Any], filters: tuple[str, ...]) -> bool:
        """The catalog's include/product rules (400 each, as the spec's parameter descriptions state)."""
        include = "AVAILABILITY" in query.get("include", [])
        if include and not query.get("product"):
            raise ApiError(400, "product is required with include=AVAILABILITY")
        for name in ("product", *filters):
            if name in query and not include:
                raise ApiError(400, f"{name} is valid only with include=AVAILABILITY")
        if "cudaVersions" in query and "minCudaVersion" in query:
            raise ApiError(400, "cudaVersions and minCudaVersion are mutually exclusive")
        return include

    def _gpus(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        filters = ("count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion")
        include = self._availability_params(query, filters)
        count = query.get("count", 1)
        cloud = query.get("cloud", "SECURE").lower()
        countries = query.get("countryCodes")
        allowed, minimum = query.get("cudaVersions"), query.get("minCudaVersion")
        dcs_in_scope = [d for d in DATA_CENTERS if not countries or d["country"] in countries]
        out = []
        for g in GPU_CATALOG:
            item = {
                "id": g["id"],
                "name": g["name"],
                "pool": g["pool"],
                "manufacturer": "NVIDIA",
                "memory": g["memory"],
                "secure": True,
                "community": True,
                "price": dict(g["price"]),
                "maxCount": dict(g["maxCount"]),
            }
            if include:
                fits = count <= g["maxCount"][cloud]  # no machine holds more GPUs of this type than maxCount
                dcs: list[dict[str, Any]] = []
                versions: dict[str, bool] = {}
                for d in dcs_in_scope:
                    cudas = [v for v in d["cuda"] if cuda_ok(v, allowed, minimum)]
                    free = self.emu.stock.get((g["id"], d["id"]), 0) if fits else 0
                    level = self._level(free, count) if cudas else "NONE"
                    for v in cudas:
                        versions[v] = versions.get(v, False) or level != "NONE"
                    if level != "NONE":
                        dcs.append({"id": d["id"], "name": d["name"], "availability": level})
                order = ["NONE", "LOW", "MEDIUM", "HIGH"]
                if countries and not dcs_in_scope:
                    continue  # the list drops a GPU type with no data center in those countries
                item["availability"] = max((x["availability"] for x in dcs), key=order.index, default="NONE")
                if dcs:
                    item["dataCenters"] = dcs
                item["cudaVersions"] = [
                    {"version": v, "available": versions[v]}
                    for v in sorted(versions, key=lambda v: tuple(map(int, v.split("."))))
                ]
            out.append(item)
        return out

    def _cpus(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        include = self._availability_params(query, ("vcpuCount",))
        n = query.get("vcpuCount")
        if n is not None and n & (n - 1):
            raise ApiError(400, f"vcpuCount {n} must be a power of two")
        out = []
        for c in CPU_CATALOG:
            item = {k: (dict(v) if isinstance(v, dict) else v) for k, v in c.items()}
            if include:
                fits = n is None or c["vcpu"]["min"] <= n <= c["vcpu"]["max"]
                dcs = (
                    [{"id": d["id"], "name": d["name"], "availability": "HIGH"} for d in DATA_CENTERS]
                    if fits
                    else []
                )
                item["availability"] = "HIGH" if dcs else "NONE"
                if dcs:
                    item["dataCenters"] = dcs
            out.append(item)
        return out

    def _dcs(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        include = query.get("include", [])
        out = []
        for d in DATA_CENTERS:
            if query.get("regions") and d["region"] not in query["regions"]:
                continue
            if not set(query.get("networkVolumeTypes", [])) <= set(d["networkVolumeTypes"]):
                continue
            if not set(query.get("compliance", [])) <= set(d["compliance"]):
                continue
            if "globalNetwork" in query and d["globalNetwork"] != query["globalNetwork"]:
                continue
            item = {k: d[k] for k in ("id", "name", "region", "globalNetwork")}
            item |= {"networkVolumeTypes": list(d["networkVolumeTypes"]), "compliance": list(d["compliance"])}
            if "GPU_AVAILABILITY" in include:
                item["gpuAvailability"] = [
                    {"id": g["id"], "name": g["name"], "availability": self._level(self.emu.stock.get((g["id"], d["id"]), 0), 1)}
                    for g in GPU_CATALOG
                ]  # fmt: skip
            if "CPU_AVAILABILITY" in include:
                item["cpuAvailability"] = [
                    {"id": c["id"], "name": c["name"], "availability": "HIGH"} for c in CPU_CATALOG
                ]
            out.append(item)
        return out

    # --- control plane --------------------------------------------------------------------------------------

    def _control(self, method: str, what: str) -> None:
        emu = self.emu
        auth = self.headers.get("Authorization", "")
        body = self._read_body_safely() or {}
        if not secrets.compare_digest(auth[7:].strip() if auth.startswith("Bearer ") else "", emu.api_key):
            return self._send(401, self._problem(401, "missing bearer token"), "application/problem+json")
        try:
            if method == "GET" and what == "state":
                emu.tick()
                return self._send(200, emu.snapshot())
            if method == "POST" and what == "faults":
                f = emu.add_fault(
                    body["kind"],
                    body.get("op", "*"),
                    int(body.get("times", 1)),
                    int(body.get("retry_after", 1)),
                )
                return self._send(200, asdict(f))
            if method == "POST" and what == "reset-faults":
                with emu.lock:
                    emu.faults.clear()
                return self._send(200, {"ok": True})
            if method == "POST" and what == "clock":
                emu.clock.advance(float(body.get("advance", 0)))
                emu.tick()
                return self._send(200, {"now": emu.clock.now()})
            if method == "POST" and what == "config":
                for k, v in body.items():
                    if not hasattr(emu.timings, k):
                        raise ValueError(f"unknown timing {k!r}")
                    setattr(emu.timings, k, float(v))
                return self._send(200, asdict(emu.timings))
            if method == "POST" and what == "stock":
                with emu.lock:
                    emu.stock[(body["gpu"], body["dataCenter"])] = int(body["gpus"])
                return self._send(200, {"ok": True})
        except (KeyError, ValueError) as exc:
            return self._send(
                400, self._problem(400, f"bad control request: {exc}"), "application/problem+json"
            )
        self._send(
            404, self._problem(404, f"no control endpoint {method} {what}"), "application/problem+json"
        )


class _Disconnect(Exception):
    pass
