"""Provisioning with guaranteed teardown: SSH key, network volume, pods (or an Instant Cluster), ready over SSH.

Order of every create: ledger `pending:<name>` -> POST -> ledger real id -> only then wait. Creates are
idempotent (an existing live resource with the same `r1lab-<run_id>-<role>` name is reused). Waiting runs one
thread per pod under one deadline and fails fast on terminal states. `on_step(step)` is called as each step
starts ("ssh-key", "volume", "create:<role>", "created:<role>", "wait:<role>", "cluster"): progress for people, abort points for
the leak test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from r1lab.cloud import ledger as cloud_ledger
from r1lab.cloud.errors import CloudError
from r1lab.cloud.pods import HostKeyStore, PodSSH, SshKey, run_ssh_key, start_command, start_script
from r1lab.cloud.pricing import gpu_price
from r1lab.cloud.runpod import TERMINAL_STATES, PodSpec, RunPodClient, ssh_endpoint
from r1lab.progress import progress
from r1lab.teardown import Ledger


@dataclass
class PodPlan:
    role: str
    image: str
    gpu_type: str | None = None
    gpu_count: int = 0
    cloud: str = "SECURE"
    data_center: str | None = None
    ports: list[str] = field(default_factory=lambda: ["22/tcp"])
    env: dict[str, str] = field(default_factory=dict)
    disk_gb: int = 50
    volume_mount: str = "/workspace"
    global_networking: bool = False
    vcpu_count: int = 4


@dataclass
class ReadyPod:
    role: str
    id: str
    name: str
    pod: dict[str, Any]
    ssh: PodSSH


class Provisioner:
    def __init__(
        self,
        run_dir: Path | str,
        run_id: str | None = None,
        client: RunPodClient | None = None,
        key: SshKey | None = None,
        on_step: Callable[[str], None] | None = None,
        ready_timeout_s: float = 1800.0,
        pod_deadline_hours: float = 6.0,
        heartbeat_timeout_s: int = 0,
        fallback_prices: dict[str, Any] | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id or self.run_dir.name
        self.client = client or RunPodClient()
        self.ledger = Ledger(self.run_dir)
        self.key = key or run_ssh_key(self.run_dir, comment=cloud_ledger.resource_name(self.run_id, "key"))
        self.on_step = on_step
        self.ready_timeout_s = ready_timeout_s
        self.pod_deadline_hours = pod_deadline_hours
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.fallback_prices = fallback_prices
        self.poll_s = poll_s
        self.known_hosts = HostKeyStore(self.run_dir / "ssh" / "known_hosts.json")
        self.cancel = threading.Event()
        cloud_ledger.register_handlers()

    def _step(self, step: str) -> None:
        if self.on_step:
            self.on_step(step)

    def name(self, role: str) -> str:
        return cloud_ledger.resource_name(self.run_id, role)

    def _record(self, kind: str, id: str, name: str, **meta: Any) -> None:
        cloud_ledger.record(self.ledger, self.client, kind, id, name, **meta)

    # --- key and volume -------------------------------------------------------------------------------------

    def ensure_key(self) -> None:
        """Register the run's public key with the account (pods created with startSsh get it)."""
        self._step("ssh-key")
        keys = self.client.get_ssh_keys()
        if not any(k.split()[:2] == self.key.public_line.split()[:2] for k in keys):
            self._record(
                cloud_ledger.KIND_SSH_KEY, cloud_ledger.ssh_key_id(self.key.public_line), self.name("key"),
                public_key=self.key.public_line,
            )  # fmt: skip
            self.client.ensure_ssh_key(self.key.public_line)

    def volume(self, size_gb: int, data_center: str, role: str = "volume") -> dict[str, Any]:
        self._step("volume")
        name = self.name(role)
        found = self.client.find_volumes(name)
        if found:
            return found[0]
        pending = "pending:" + name
        self._record(cloud_ledger.KIND_VOLUME, pending, name, size_gb=size_gb, data_center=data_center)
        vol = self.client.create_volume(name, size_gb, data_center)
        self._record(
            cloud_ledger.KIND_VOLUME, vol["id"], name, size_gb=size_gb, data_center=vol["dataCenter"]
        )
        self.ledger.deleted(cloud_ledger.KIND_VOLUME, pending, resolved=vol["id"])
        return vol

    # --- pods -----------------------------------------------------------------------------------------------

    def _usd_per_hour(self, plan: PodPlan, pod: dict[str, Any]) -> float:
        if pod.get("cost"):
            return float(pod["cost"])
        if not plan.gpu_type:
            return 0.0
        return gpu_price(plan.gpu_type, plan.cloud, self.client, self.fallback_prices).usd_per_gpu_hour * (
            plan.gpu_count
        )

    def _args(self) -> str:
        deadline = int(time.time() + self.pod_deadline_hours * 3600) if self.pod_deadline_hours else 0
        return start_command(start_script(self.key.public_line, deadline, self.heartbeat_timeout_s))

    def create_pod(self, plan: PodPlan, volume: dict[str, Any] | None = None) -> dict[str, Any]:
        self._step(f"create:{plan.role}")
        name = self.name(plan.role)
        for pod in self.client.find_pods(name):
            if pod["status"] not in TERMINAL_STATES:
                return pod  # idempotent: this run already has it
        spec = PodSpec(
            name=name,
            image=plan.image,
            gpu_type=plan.gpu_type,
            gpu_count=plan.gpu_count or 1,
            vcpu_count=plan.vcpu_count,
            cloud=plan.cloud,
            data_centers=[plan.data_center] if plan.data_center else [],
            volume_id=volume["id"] if volume else None,
            volume_mount=plan.volume_mount,
            ports=list(plan.ports),
            env=dict(plan.env),
            args=self._args(),
            disk_gb=plan.disk_gb,
            global_networking=plan.global_networking,
            start_ssh=True,
        )
        pending = "pending:" + name
        self._record(cloud_ledger.KIND_POD, pending, name, role=plan.role)
        pod = self.client.create_pod(spec)
        self._record(
            cloud_ledger.KIND_POD, pod["id"], name, role=plan.role, usd_per_hour=self._usd_per_hour(plan, pod),
            gpu=plan.gpu_type, gpus=plan.gpu_count, data_center=pod.get("dataCenterId"),
        )  # fmt: skip
        self.ledger.deleted(cloud_ledger.KIND_POD, pending, resolved=pod["id"])
        self._step(f"created:{plan.role}")
        return pod

    def ssh(self, pod: dict[str, Any]) -> PodSSH:
        ep = ssh_endpoint(pod)
        if ep is None:
            raise CloudError(f"pod {pod['name']} ({pod['id']}) has no direct SSH endpoint yet")
        return PodSSH(
            ep.host, ep.port, ep.username, self.key, self.known_hosts, pod["id"], name=pod["name"],
            log_path=self.run_dir / "logs" / "ssh.log",
        )  # fmt: skip

    def wait_ready(self, pod: dict[str, Any], role: str) -> ReadyPod:
        self._step(f"wait:{role}")
        holder: dict[str, PodSSH] = {}

        def probe(p: dict[str, Any], ep: Any) -> None:
            if self.cancel.is_set():
                raise CloudError("cancelled")
            s = holder.get("ssh")
            if s is None or (s.host, s.port) != (ep.host, ep.port):
                s = holder["ssh"] = self.ssh(p)
            s.check_ready(timeout_s=20)

        ready = self.client.wait_ready(
            pod["id"], self.ready_timeout_s, probe=probe, poll_s=self.poll_s, cancel=self.cancel
        )
        return ReadyPod(role, ready["id"], ready["name"], ready, holder["ssh"])

    def pods(self, plans: list[PodPlan], volume: dict[str, Any] | None = None) -> list[ReadyPod]:
        """Create every pod (each in the ledger before any waiting), then wait for all under one deadline."""
        created = [(plan, self.create_pod(plan, volume)) for plan in plans]
        with progress(f"waiting for {len(created)} pod(s)", total=len(created), unit="pod") as bar:
            return self._parallel([partial(self.wait_ready, pod, plan.role) for plan, pod in created], bar)

    def _parallel(self, jobs: list[Callable[[], ReadyPod]], bar: Any = None) -> list[ReadyPod]:
        """Run jobs on daemon threads; the main thread only sleeps and polls, so Ctrl-C lands cleanly (never
        inside a lock of concurrent.futures) and a dying interpreter never waits for a poller. First failure
        wins: it cancels the others and is raised here."""
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException] = []
        done = [threading.Event() for _ in jobs]

        def runner(i: int) -> None:
            try:
                results[i] = jobs[i]()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                errors.append(exc)
            finally:
                done[i].set()

        threads = [threading.Thread(target=runner, args=(i,), daemon=True, name=f"r1lab-wait-{i}") for i in range(len(jobs))]  # fmt: skip
        for t in threads:
            t.start()
        reported = 0
        try:
            while not all(d.is_set() for d in done):
                if errors:
                    raise errors[0]
                time.sleep(0.1)
                finished = sum(d.is_set() for d in done)
                if bar is not None and finished > reported:
                    bar.advance(finished - reported)
                    reported = finished
            if errors:
                raise errors[0]
        except BaseException:
            self.cancel.set()
            raise
        return results

    # --- instant clusters -----------------------------------------------------------------------------------

    def cluster(
        self,
        plan: PodPlan,
        nodes: int,
        volume: dict[str, Any] | None = None,
        cluster_type: str = "APPLICATION",
    ) -> list[ReadyPod]:
        """An Instant Cluster of `nodes` identical pods (fast inter-node fabric); waits for every member."""
        self._step("cluster")
        name = self.name(plan.role)
        found = self.client.find_clusters(name)
        if found:
            cluster = found[0]
        else:
            body: dict[str, Any] = {
                "name": name,
                "type": cluster_type,
                "compute": {"gpuTypeId": plan.gpu_type, "gpuCountPerPod": plan.gpu_count, "podCount": nodes},
                "image": plan.image,
                "args": self._args(),
                "ports": list(plan.ports),
                "env": dict(plan.env),
                "disk": plan.disk_gb,
                "startSsh": True,
            }
            if plan.data_center:
                body["dataCenterIds"] = [plan.data_center]
            if volume:
                body["mounts"] = {"network": [{"volumeId": volume["id"], "path": plan.volume_mount}]}
            pending = "pending:" + name
            self._record(cloud_ledger.KIND_CLUSTER, pending, name, role=plan.role)
            cluster = self.client.create_cluster(body)
            rate = gpu_price(
                plan.gpu_type or "", plan.cloud, self.client, self.fallback_prices
            ).usd_per_gpu_hour
            self._record(
                cloud_ledger.KIND_CLUSTER, cluster["id"], name, role=plan.role,
                usd_per_hour=rate * plan.gpu_count * nodes, nodes=nodes,
            )  # fmt: skip
            self.ledger.deleted(cloud_ledger.KIND_CLUSTER, pending, resolved=cluster["id"])
        members = sorted(self.client.cluster_pods(cluster["id"]), key=lambda p: p["cluster"]["rank"] or 0)
        return self._parallel(
            [partial(self.wait_ready, p, f"{plan.role}-{p['cluster']['rank']}") for p in members]
        )
