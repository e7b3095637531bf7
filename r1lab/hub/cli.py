"""`r1lab download`: show what a download takes (file list, patterns, volume size), or run it on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r1lab.hub.download import LocalExec, download_to_volume
from r1lab.hub.plan import HubError, fmt_bytes, plan_download


def _default_include() -> list[str]:
    from r1lab.config import Model

    return list(Model().include)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="r1lab download",
        description="Plan a model download (file list with sizes and hashes at a pinned commit, patterns that must "
        "match, volume size) and, with --dest, download it here with huggingface_hub and verify every file. "
        "HF_TOKEN is read from the environment. On a pod, notebooks call r1lab.hub.download_to_volume.",
    )
    ap.add_argument("--repo", default="deepseek-ai/DeepSeek-R1")
    ap.add_argument(
        "--revision", default="main", help="branch, tag or commit (pin a commit for reproducible runs)"
    )
    ap.add_argument("--include", action="append", help="glob, repeatable (default: params' model.include)")
    ap.add_argument("--exclude", action="append", default=[], help="glob, repeatable")
    ap.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    ap.add_argument("--volume-size-gb", type=int, help="check this volume size against the need")
    ap.add_argument("--dest", help="download into this directory on this machine (omit: plan only)")
    ap.add_argument("--verify", choices=("full", "fast"), default="full")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument(
        "--python", default=sys.executable, help="interpreter that runs the download (needs huggingface_hub)"
    )
    ap.add_argument("--log", type=Path, help="append the download's events here (JSON lines)")
    ap.add_argument("--list", action="store_true", help="print every selected file")
    args = ap.parse_args(argv)
    include = args.include or _default_include()
    try:
        plan = plan_download(args.repo, args.revision, include, args.exclude, endpoint=args.endpoint)
        for pat, n in plan.matches.items():
            print(f"  {pat:<32} {n:>5} files")
        if args.list:
            for f in plan.files:
                print(f"  {fmt_bytes(f.size):>10}  {f.sha256 or 'git:' + f.blob_id}  {f.path}")
        if args.dest is None:
            print(plan.space_report(args.volume_size_gb))
            if args.volume_size_gb is not None:
                plan.check_volume(args.volume_size_gb)
            return 0
        manifest = download_to_volume(
            LocalExec(),
            args.repo,
            args.revision,
            str(Path(args.dest).resolve()),
            include,
            exclude=args.exclude,
            endpoint=args.endpoint,
            volume_size_gb=args.volume_size_gb,
            max_workers=args.workers,
            verify=args.verify,
            python=args.python,
            install_missing=False,
            log_path=args.log,
            plan=plan,
        )
        print(f"manifest: {manifest.path}")
        return 0
    except HubError as exc:
        print(f"r1lab download: {exc}", file=sys.stderr)
        return 1
