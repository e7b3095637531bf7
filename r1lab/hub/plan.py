"""What to download: the repo's file list at a pinned commit, chosen by patterns that must each match, and sizing.

The list comes from `HfApi.model_info(repo, revision, files_metadata=True)`: every file's size and git blob id,
and for LFS files (the weight shards) their sha256. The revision is resolved to its commit once, here, and the pod
downloads exactly that commit, so planning and downloading can never see two different repos.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

GB = 1_000_000_000  # RunPod sizes network volumes in GB
GIB = 1024**3
# Beyond the files themselves: huggingface_hub's metadata and lock files, the manifest, logs, and a margin so the
# volume never runs full (a filesystem at 100% fails writes in ways that are slow to diagnose).
HEADROOM_FRACTION = 0.02
HEADROOM_MIN_BYTES = 5 * GB


class HubError(RuntimeError):
    """A download or verification problem, stated for a person (what, where, and what to do)."""


class PatternError(HubError):
    """An include pattern matches no file of the repo (like the original plan's `*.fp8`)."""


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None  # LFS files only: the Hub publishes no sha256 for small git-stored files

    def spec(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "blob_id": self.blob_id}


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str
    commit: str
    files: tuple[RepoFile, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    matches: dict[str, int] = field(default_factory=dict)  # include pattern -> files it selected

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def required_bytes(self) -> int:
        """Space the volume needs: every file plus headroom (see HEADROOM_*)."""
        return self.total_bytes + max(HEADROOM_MIN_BYTES, math.ceil(self.total_bytes * HEADROOM_FRACTION))

    def recommended_volume_gb(self) -> int:
        """The smallest whole-GB volume size that holds `required_bytes`, rounded up to 10 GB."""
        return 10 * math.ceil(self.required_bytes / GB / 10)

    def space_report(self, volume_size_gb: int | None = None) -> str:
        """One line per fact: what the files take, what the volume needs, and how a given size compares."""
        lines = [
            f"{self.repo_id}@{self.commit[:12]}: {len(self.files)} files, {fmt_bytes(self.total_bytes)} "
            f"({self.total_bytes / GIB:,.1f} GiB)",
            f"needs {fmt_bytes(self.required_bytes)} with headroom: create a volume of at least "
            f"{self.recommended_volume_gb()} GB",
        ]
        if volume_size_gb is not None:
            spare = volume_size_gb * GB - self.required_bytes
            verdict = "enough" if spare >= 0 else "NOT enough"
            lines.append(
                f"a {volume_size_gb} GB volume is {verdict}: {abs(spare) / GB:,.1f} GB "
                f"{'to spare' if spare >= 0 else 'short'} ({volume_size_gb * GB / self.required_bytes:.2f}x the need)"
            )
        return "\n".join(lines)

    def check_volume(self, volume_size_gb: int) -> None:
        if volume_size_gb * GB < self.required_bytes:
            raise HubError(
                f"volume.size_gb = {volume_size_gb} is too small for {self.repo_id}: the selected files take "
                f"{self.total_bytes / GB:,.1f} GB and need {self.required_bytes / GB:,.1f} GB with headroom; "
                f"set volume.size_gb to at least {self.recommended_volume_gb()}"
            )


def fmt_bytes(n: float) -> str:
    """Decimal units, as RunPod and the Hub size things: 688.6 GB, 16.0 MB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:.0f} B"


def _match(paths: Sequence[str], pattern: str) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects  # the same matching snapshot_download applies

    return list(filter_repo_objects(paths, allow_patterns=[pattern]))


def select_files(
    files: Sequence[RepoFile],
    include: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    repo_id: str = "the repo",
) -> tuple[list[RepoFile], dict[str, int]]:
    """Files matching any include pattern and no exclude pattern. Every include pattern must select at least one
    file (after excludes), else PatternError names each such pattern and shows what the repo does hold."""
    if not include:
        raise PatternError(f"no include patterns for {repo_id}: give at least one (e.g. '*.safetensors')")
    paths = [f.path for f in files]
    excluded = {p for pat in exclude for p in _match(paths, pat)}
    chosen: set[str] = set()
    matches: dict[str, int] = {}
    problems = []
    for pat in include:
        hit = _match(paths, pat)
        kept = [p for p in hit if p not in excluded]
        matches[pat] = len(kept)
        if not hit:
            problems.append(f"{pat!r} matches no file")
        elif not kept:
            problems.append(f"{pat!r} matches {len(hit)} files, all removed by exclude {list(exclude)}")
        chosen.update(kept)
    if problems:
        names = [p.rsplit("/", 1)[-1] for p in paths]
        exts = sorted({("*" + n[n.rfind(".") :]) if n.rfind(".") > 0 else n for n in names})
        raise PatternError(
            f"{repo_id}: "
            + "; ".join(problems)
            + f". The repo holds {len(paths)} files; kinds: {', '.join(exts[:15])}"
            + (
                " (DeepSeek-R1's FP8 weights are the model-*.safetensors shards)"
                if any(".fp8" in p for p in problems)
                else ""
            )
            + ". Fix the include/exclude patterns (params: model.include / model.exclude)."
        )
    return [f for f in files if f.path in chosen], matches


def list_repo_files(
    repo_id: str, revision: str, *, endpoint: str | None = None
) -> tuple[str, list[RepoFile]]:
    """(commit, files with size/blob id/sha256) at `revision`, through HfApi; HF_TOKEN from the environment."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from r1lab.secrets import get_secret

    api = HfApi(endpoint=endpoint, token=get_secret("HF_TOKEN") or False)
    where = endpoint or "https://huggingface.co"
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError as exc:
        raise HubError(
            f"{repo_id}: revision {revision!r} does not exist on {where} (params: model.revision)"
        ) from exc
    except GatedRepoError as exc:
        raise HubError(
            f"{repo_id} is gated on {where}: accept its terms on the Hub and export HF_TOKEN with read access"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise HubError(
            f"{repo_id} not found on {where} (or private: export HF_TOKEN) (params: model.repo_id)"
        ) from exc
    if not info.sha or not info.siblings:
        raise HubError(f"{repo_id}@{revision}: the Hub returned no commit or no file list")
    files = []
    for s in info.siblings:
        if s.size is None or s.blob_id is None:
            raise HubError(
                f"{repo_id}: no size/blob id for {s.rfilename}: the endpoint ignored files_metadata"
            )
        files.append(RepoFile(s.rfilename, int(s.size), s.blob_id, s.lfs.sha256 if s.lfs else None))
    return info.sha, files


def plan_download(
    repo_id: str,
    revision: str,
    include: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    endpoint: str | None = None,
) -> DownloadPlan:
    """Resolve the revision, list the files with their hashes, and choose them by pattern (see select_files)."""
    commit, files = list_repo_files(repo_id, revision, endpoint=endpoint)
    chosen, matches = select_files(files, include, exclude, repo_id=f"{repo_id}@{revision}")
    return DownloadPlan(repo_id, revision, commit, tuple(chosen), tuple(include), tuple(exclude), matches)
