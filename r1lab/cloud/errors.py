"""Errors of the RunPod control layer: each prints as one line a person can act on, never with a secret."""

from __future__ import annotations

from typing import Any

from r1lab.secrets import redact

# RunPod's capacity refusal. The v2 spec says so itself (createPod: "capacity exhaustion currently carries no
# machine-readable code of its own -- only a human-readable `detail`", always with status 400), so this is the one
# place r1lab reads a detail string. The texts, as RunPod has answered them:
# - "There are no longer any instances available with the requested specifications. Please refresh and try
#   again." (a v2 400 problem body recorded from a live call on 2026-08-20 in a public recorded-payload test; the
#   same text from the GraphQL API in runpod/runpodctl#189, runpod/runpod-python#314, mlabonne/llm-autoeval#3)
# - "There are no longer any instances available with the request specifications. Please try again later."
#   (dstackai/dstack#1740)
# - "There are no longer any instances available with enough disk space." (runpod/runpod-python#297)
CAPACITY_DETAIL_PREFIX = "There are no longer any instances available"


class CloudError(Exception):
    """Base class: a failure talking to RunPod (or the twin's emulator of it)."""

    def __str__(self) -> str:
        return redact(super().__str__())


class RunPodAPIError(CloudError):
    """An RFC 9457 problem answer from the API."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        operation: str,
        errors: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status, self.title, self.detail, self.operation = status, title, detail, operation
        self.errors = list(errors or [])
        self.headers = dict(headers or {})
        extra = f" ({'; '.join(self.errors)})" if self.errors else ""
        super().__init__(f"RunPod {operation}: HTTP {status} {title}: {detail}{extra}")

    @classmethod
    def from_problem(
        cls, status: int, body: Any, operation: str, headers: dict[str, str] | None = None
    ) -> RunPodAPIError:
        problem = body if isinstance(body, dict) else {}
        title = str(problem.get("title") or "")
        detail = str(problem.get("detail") or (body if isinstance(body, str) else ""))[:500]
        errors = [str(e) for e in problem.get("errors") or []]
        kind = {
            401: AuthError,
            402: InsufficientBalanceError,
            403: ForbiddenError,
            404: NotFoundError,
            409: ConflictError,
            422: RequestInvalidError,
            429: RateLimitedError,
        }.get(status, TransientError if status >= 500 else RunPodAPIError)
        return kind(status, title, detail, operation, errors, headers)


class AuthError(RunPodAPIError):
    def __str__(self) -> str:
        return redact(
            f"RunPod {self.operation}: HTTP 401 {self.detail or 'unauthorized'}. Fix: set RUNPOD_API_KEY in the "
            "environment to a valid key (console > Settings > API Keys); it is never read from params files."
        )


class ForbiddenError(RunPodAPIError):
    pass


class InsufficientBalanceError(RunPodAPIError):
    pass


class NotFoundError(RunPodAPIError):
    pass


class ConflictError(RunPodAPIError):
    pass


class RequestInvalidError(RunPodAPIError):
    """422: the body does not match the API's contract (a bug on our side, never retried)."""


class RateLimitedError(RunPodAPIError):
    pass


def is_capacity_refusal(error: RunPodAPIError) -> bool:
    """A 400 whose detail is RunPod's capacity text (see CAPACITY_DETAIL_PREFIX); any other 400 breaks a rule."""
    return error.status == 400 and error.detail.strip().lower().startswith(CAPACITY_DETAIL_PREFIX.lower())


class RequestRejectedError(RunPodAPIError):
    """400 that is not a capacity refusal: the request breaks one of RunPod's rules (it fails the same way on
    every data center and GPU, so retrying elsewhere does not help)."""

    def __str__(self) -> str:
        return redact(
            f"RunPod {self.operation}: HTTP 400 {self.detail}: RunPod refuses this request by its rules "
            "(not for capacity). Fix: change what the detail names in the params file."
        )


class TransientError(RunPodAPIError):
    """5xx, or retries of a retryable failure ran out."""


class NetworkError(CloudError):
    """The API could not be reached (connection refused, reset, timeout)."""


class NoCapacityError(CloudError):
    """RunPod had no machine for the GPU type and count in the data centers asked for."""

    def __init__(
        self,
        gpu: str,
        count: int,
        data_centers: list[str],
        cloud: str,
        detail: str,
        alternatives: list[str] | None,
    ) -> None:
        """`alternatives`: where the catalog has stock now; None when it was not asked (e.g. for a cluster)."""
        self.gpu, self.count, self.data_centers, self.cloud = gpu, count, list(data_centers), cloud
        self.detail, self.alternatives = detail, list(alternatives or [])
        where = ", ".join(data_centers) or "any data center"
        alt = (
            ""
            if alternatives is None
            else "; available now: " + ", ".join(alternatives[:8])
            if alternatives
            else "; the catalog lists no alternative with stock now"
        )
        super().__init__(
            f"no RunPod capacity for {count} x {gpu} ({cloud}) in {where}: {detail}{alt}. "
            "Fix: change provider.data_center or the pods' gpu_type in the params file, or retry later."
        )


class VolumeDataCenterError(CloudError):
    """A pod asked for a data center other than the one its network volume lives in."""

    def __init__(self, volume_id: str, volume_dc: str, pod_dcs: list[str]) -> None:
        self.volume_id, self.volume_dc, self.pod_dcs = volume_id, volume_dc, list(pod_dcs)
        super().__init__(
            f"network volume {volume_id} lives in {volume_dc} but the pod asks for {', '.join(pod_dcs)}: "
            f"volumes cannot move between data centers. Fix: set provider.data_center: {volume_dc} "
            "in the params file (or create a new volume there)."
        )


class PodFailedError(CloudError):
    """A pod reached a terminal state (ERROR, EXITED, TERMINATED) while we waited for it."""

    def __init__(self, pod_id: str, name: str, status: str, step: str) -> None:
        self.pod_id, self.name, self.status, self.step = pod_id, name, status, step
        super().__init__(f"pod {name} ({pod_id}) went {status} while waiting for {step}")


class ReadyTimeoutError(CloudError):
    """A pod did not become reachable before its deadline."""

    def __init__(self, pod_id: str, name: str, step: str, waited_s: float, last: str) -> None:
        self.pod_id, self.name, self.step, self.waited_s = pod_id, name, step, waited_s
        super().__init__(
            f"pod {name} ({pod_id}) not ready after {waited_s:.0f}s: stuck at '{step}' ({last}). "
            "It stays in the ledger and is torn down with the run."
        )


class BudgetExceededError(CloudError):
    """The run reached its cost or time cap and was torn down."""
