"""Capture, or check against a capture, every output a refactoring must leave byte-identical, for every params file.

    .venv/bin/python scripts/golden_outputs.py capture DIR   # before a change (DIR outside the repo)
    .venv/bin/python scripts/golden_outputs.py check DIR     # after it: lists every file that differs, exit 1

Per params file under params/: `r1lab plan P --json`, `r1lab plan P`, `r1lab serve P`, `r1lab serve P --json`,
`r1lab serve P --audit-plan` (stdout, stderr and exit code, through r1lab.cli.main in this process), and what the
twin runs from the same params: the mocker timing tables (sha256 of each NPZ and its figures) of every mocker stage
and the resolved deployment (resolve(exp).to_json()).

Not a test: the plan's figures change on purpose whenever the performance model does (#18), so a stored capture
would fail CI for every model change; a refactoring compares against a capture taken just before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r1lab import cli  # noqa: E402
from r1lab.config import load_experiment  # noqa: E402
from r1lab.resolve import resolve  # noqa: E402
from r1lab.serve.commands import render, stages  # noqa: E402
from r1lab.serve.deploy import mocker_timings  # noqa: E402

COMMANDS = {
    "plan.json": ["plan", "{p}", "--json"],
    "plan.txt": ["plan", "{p}"],
    "serve.sh": ["serve", "{p}"],
    "serve.json": ["serve", "{p}", "--json"],
    "serve-audit.txt": ["serve", "{p}", "--audit-plan"],
}


def _cli(argv: list[str]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    # progress lines carry elapsed times: keep stderr only when the command failed
    return out.getvalue() + (f"\n--- stderr\n{err.getvalue()}" if rc else "") + f"\n--- rc {rc}\n"


def _mocker(params: Path) -> str:
    exp = load_experiment(params)
    lines = []
    for stage in stages(exp):
        dep = render(exp, stage, engine="mocker")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                timings = mocker_timings(exp, dep, Path(tmp))
            except ValueError as exc:  # a stage one pod cannot hold (the run skips it)
                lines.append(f"{stage}: {type(exc).__name__}: {exc}")
                timings = {}
            for group, t in sorted(timings.items()):
                digest = hashlib.sha256(Path(t.npz_path).read_bytes()).hexdigest()
                lines.append(f"{stage}/{group}: npz {digest} kv_bytes_per_token {t.kv_bytes_per_token} "
                             f"num_gpu_blocks {t.num_gpu_blocks} block_size {t.block_size} "
                             f"max_num_seqs {t.max_num_seqs} deployment {t.deployment!r}")  # fmt: skip
        for c in dep.commands:
            lines.append(f"{stage} {c.name} run={c.run}: {c.shell()}")
    return "\n".join(lines) + "\n"


def outputs(params: Path) -> dict[str, str]:
    rel = str(params.relative_to(ROOT))
    out = {name: _cli([a.format(p=rel) for a in argv]) for name, argv in COMMANDS.items()}
    out["mocker.txt"] = _mocker(params)
    out["resolved.json"] = resolve(load_experiment(params)).to_json()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("capture", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, base = argv[0], Path(argv[1])
    differ: list[str] = []
    for params in sorted((ROOT / "params").glob("*.yaml")):
        for name, text in outputs(params).items():
            path = base / params.stem / name
            if mode == "capture":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            elif not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(str(path))
                path.with_suffix(path.suffix + ".new").write_text(text, encoding="utf-8")
            print(f"{mode} {params.stem}/{name}: {'DIFFERS' if str(path) in differ else 'ok'}", flush=True)
    if mode == "check":
        print(f"{len(differ)} differ" + "".join(f"\n  {d} (now: {d}.new)" for d in differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
