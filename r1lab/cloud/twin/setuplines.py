"""`pods[].setup` on the twin: what of it needs a GPU, its resolution for the real pod, and what the twin runs.

A setup line runs in the pod over SSH as written, except the requirements that only a GPU pod can use (the CUDA
build of vLLM, CUDA torch, NIXL's CUDA builds, FlashInfer): those are taken out of the line the twin runs (the
twin's engine stands in for them: the mocker, or the CPU engine) and the whole requirement set is resolved by a
real resolver (`uv pip compile`) for the real pod's platform (CPython of the image, manylinux x86_64, PyPI), so a
conflict between pins fails here as it would on RunPod. Both are written in the run's records
(`setup/<role>.json`) and printed where the notebook shows the setup step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Distributions whose wheels only work with a GPU (CUDA): never installed on the twin.
GPU_ONLY = {"vllm", "torch", "torchvision", "torchaudio", "flashinfer-python", "xformers", "nixl", "nixl-cu12",
            "nixl-cu13", "triton"}  # fmt: skip
POD_PLATFORM = "x86_64-manylinux_2_28"
_PIP = re.compile(r"^(?:(?:python3?|\S*/python3?) -m pip|pip3?|uv pip) install\b")


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~;@ ]", req, maxsplit=1)[0].lower().replace("_", "-")


@dataclass
class SetupPlan:
    """One setup line: as written, as the twin runs it, what was taken out, and the resolution."""

    line: str
    ran: str
    substituted: list[str] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def plan_line(line: str, engine: str) -> SetupPlan:
    """Take the GPU-only requirements out of every pip/uv install in `line` (segments split on && and ;)."""
    parts = re.split(r"(\s*&&\s*|\s*;\s*)", line)
    out, subs, reqs = [], [], []
    for part in parts:
        seg = part.strip()
        if not _PIP.match(seg):
            out.append(part)
            continue
        words = shlex.split(seg)
        i = words.index("install") + 1
        head, rest = words[:i], words[i:]
        keep, opts = [], []
        takes_value = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "-r", "--python"}
        skip = False
        for w in rest:
            if skip:
                opts.append(w)
                skip = False
            elif w.startswith("-"):
                opts.append(w)
                skip = w in takes_value
            elif _name(w) in GPU_ONLY:
                subs.append(
                    f"{w} -> not installed on the twin (needs a GPU); the twin's engine ({engine}) stands in"
                )
                reqs.append(w)
            else:
                keep.append(w)
                if "--no-deps" not in rest:
                    reqs.append(w)
        out.append(shlex.join(head + opts + keep) if keep else "true")
    return SetupPlan(line, "".join(out), subs, reqs)


def resolve(requirements: list[str], python: str, cache: Path | None = None) -> dict:
    """`uv pip compile` of `requirements` for CPython `python` on manylinux x86_64 against PyPI (the real pod's
    platform). Returns {"ok", "python", "platform", "pins" | "error", "seconds"}; cached by input."""
    key = hashlib.sha256(json.dumps([sorted(requirements), python, POD_PLATFORM]).encode()).hexdigest()[:16]
    cache = cache or Path(os.environ.get("R1LAB_RESOLVE_CACHE", "/var/cache/r1lab/resolve"))
    hit = cache / f"{key}.json"
    if hit.exists():
        return json.loads(hit.read_text())
    uv = Path(sys.prefix) / "bin" / "uv"
    uv_cmd = str(uv) if uv.exists() else (shutil.which("uv") or "uv")
    t0 = time.monotonic()
    p = subprocess.run(
        [uv_cmd, "pip", "compile", "-", "--python-platform", POD_PLATFORM, "--python-version", python,
         "--no-header", "--no-annotate", "--quiet", "--index-url", "https://pypi.org/simple"],
        input="\n".join(requirements) + "\n", capture_output=True, text=True, timeout=600,
        env={**os.environ, "UV_HTTP_TIMEOUT": "120"},
    )  # fmt: skip
    out: dict[str, Any] = {"ok": p.returncode == 0, "python": python, "platform": POD_PLATFORM, "requirements": requirements,
           "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    if p.returncode == 0:
        out["pins"] = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
    else:
        out["error"] = (p.stderr or p.stdout).strip()[-3000:]
    if p.returncode == 0 or "No solution found" in out.get("error", ""):  # never cache a network failure
        cache.mkdir(parents=True, exist_ok=True)
        hit.write_text(json.dumps(out, indent=1) + "\n")
    return out


def image_python(image: str) -> str:
    """The CPython version of the real image (its manifest), for resolving what a real pod would install."""
    from r1lab.cloud.twin.baseimage import manifest_for

    return manifest_for(image)["real"]["python_version"]
