"""`SshExecutor` lives in `r1lab.cloud.sshexec` (it serves RunPod and twin pods alike); importable here too."""

from r1lab.cloud.sshexec import SshExecutor

__all__ = ["SshExecutor"]
