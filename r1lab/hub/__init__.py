"""Model weights: plan (file list, patterns, volume size), download on a pod with huggingface_hub, verify, manifest.

Public API:
- `plan_download(repo_id, revision, include, exclude=(), endpoint=None) -> DownloadPlan` (`.space_report(size_gb)`,
  `.check_volume(size_gb)`, `.recommended_volume_gb()`, `.files`, `.commit`)
- `download_to_volume(pod_exec, repo_id, revision, dest, patterns, ...) -> Manifest`
- `PodExec` (protocol: `(command, env, on_line) -> exit code`), `LocalExec`, `ssh_exec(PodSSH)`
- `HubError`, `PatternError`; `cli_main(argv)` for `r1lab download`.
The fake Hub for tests and the twin is `r1lab.hub.fake` (`python -m r1lab.hub.fake --port 0 --repo-dir DIR`).
"""

from __future__ import annotations

from r1lab.hub.download import LocalExec, Manifest, PodExec, build_command, download_to_volume, ssh_exec
from r1lab.hub.plan import DownloadPlan, HubError, PatternError, RepoFile, plan_download, select_files

__all__ = [
    "DownloadPlan",
    "HubError",
    "LocalExec",
    "Manifest",
    "PatternError",
    "PodExec",
    "RepoFile",
    "build_command",
    "cli_main",
    "download_to_volume",
    "plan_download",
    "select_files",
    "ssh_exec",
]


def cli_main(argv: list[str]) -> int:
    """`r1lab download`: plan (and with --dest, download here and verify). See `r1lab download --help`."""
    from r1lab.hub.cli import main

    return main(argv)
