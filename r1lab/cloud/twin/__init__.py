"""The local twin: RunPod-in-a-box. Pods are network-namespace hosts with real sshd (see `Twin`)."""

from r1lab import teardown
from r1lab.cloud.twin.api import Twin, TwinError, default_state_dir, teardown_twin, twin_for_run

teardown.register("twin", "r1lab.cloud.twin.api:teardown_twin")

__all__ = ["Twin", "TwinError", "default_state_dir", "teardown_twin", "twin_for_run"]
