"""Run directories: where one run's results, ledger and hand-over state live (docs/architecture.md).

`new_run` creates `outputs/<experiment>/<run_id>/` with `run.json`; `open_run` is what every notebook calls
first: it loads the validated params and the run directory the runner created (or a fresh one when the notebook
is run on its own in JupyterLab). Nothing in a run directory is overwritten.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import getpass
import importlib.abc
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import secrets as _random
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from r1lab import resolve
from r1lab.config import Experiment, load_experiment
from r1lab.resolve import ResolvedDeployment
from r1lab.runs import current_run, outputs_root, params_key, record_join, run_state, set_current
from r1lab.teardown import Ledger

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONED_PACKAGES = (
    "r1lab",
    "ray",
    "ai-dynamo",
    "ai-dynamo-runtime",
    "papermill",
    "pydantic",
    "asyncssh",
    "aiohttp",
    "plotly",
    "kaleido",
    "huggingface_hub",
    "numpy",
    "pandas",
    "locust",
)


class RunDirError(RuntimeError):
    pass


def new_run_id() -> str:
    """Sortable, unique: UTC time plus 4 random hex digits (e.g. 20261127-221503-3fa9)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S") + "-" + _random.token_hex(2)


def git_sha(root: Path = REPO_ROOT) -> str | None:
    """HEAD's sha, with '+dirty' when tracked files differ from it; None outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "user": getpass.getuser(),
    }


class State:
    """`state.json`: small hand-over values between notebooks (pods, endpoints), updated under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        lock = self.path.with_suffix(".lock")
        with open(lock, "a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
                tmp.replace(self.path)

    def get(self, key: str, default: Any = None) -> Any:
        with self._locked() as data:
            return data.get(key, default)

    def require(self, key: str, produced_by: str) -> Any:
        """A value an earlier notebook must have written; a clear error naming that notebook otherwise."""
        value = self.get(key)
        if value is None:
            raise RunDirError(f"{self.path}: no {key!r} yet: run {produced_by} first in this run directory")
        return value

    def set(self, key: str, value: Any) -> None:
        with self._locked() as data:
            data[key] = value

    def all(self) -> dict[str, Any]:
        with self._locked() as data:
            return dict(data)


@dataclass
class RunContext:
    """One run: its validated experiment, directory, ledger and hand-over state."""

    exp: Experiment
    params_path: Path
    run_dir: Path
    ledger: Ledger = field(init=False)
    state: State = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.run_dir)
        self.state = State(self.run_dir / "state.json")

    @cached_property
    def resolved(self) -> ResolvedDeployment:
        """The run's resolved deployment (resolved.json, written once when the run was created; a run directory
        older than that file: resolved from the params now)."""
        return resolve.for_run(self.run_dir, self.exp)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def path(self, *parts: str) -> Path:
        """A path inside the run dir (parents created)."""
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a new JSON file into the run dir; refuses to overwrite one that exists."""
        p = self.path(name)
        if p.exists():
            raise RunDirError(f"{p} exists already: results are never overwritten (start a new run)")
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        tmp.replace(p)
        return p

    def resource_name(self, role: str) -> str:
        """Cloud resource name: r1lab-<run_id>-<role>."""
        return f"r1lab-{self.run_id}-{role}"


def new_run(params_path: str | Path, root: str | Path | None = None, run_id: str | None = None) -> RunContext:
    """Create a fresh run directory for a params file and write run.json."""
    params_path = Path(params_path).resolve()
    exp = load_experiment(params_path)
    # R1LAB_OUTPUTS overrides the params' outputs.root (tests, shared machines)
    base = Path(root) if root else outputs_root(exp.outputs.root)
    base = base if base.is_absolute() else REPO_ROOT / base
    run_dir = base / exp.name / (run_id or new_run_id())
    run_dir.mkdir(parents=True, exist_ok=False)
    for sub in ("commands", "logs", "notebooks", "charts"):
        (run_dir / sub).mkdir()
    shutil.copyfile(params_path, run_dir / "params.yaml")
    ctx = RunContext(exp, params_path, run_dir)
    ctx.write_json(
        "run.json",
        {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_dir.name,
            "experiment": exp.name,
            "params_file": str(
                params_path.relative_to(REPO_ROOT) if params_path.is_relative_to(REPO_ROOT) else params_path
            ),
            "params": exp.model_dump(mode="json"),
            "git_sha": git_sha(),
            "versions": package_versions(),
            "host": host_info(),
            "seed": exp.seed,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    resolve.save(resolve.resolve(exp), run_dir)
    set_current(run_dir, params_path)
    return ctx


def resolve_params(params_path: str | Path) -> Path:
    """A params path as given, or relative to the repo root (notebooks run with cwd notebooks/ in JupyterLab)."""
    p = Path(params_path)
    if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def open_run(params_path: str | Path, run_dir: str | Path = "", step: str | None = None) -> RunContext:
    """What each notebook calls first, with its own name as `step` (e.g. "05_load_test").

    With a run_dir (the runner's, or one you pass): that run. Empty, as when stepping through notebooks by hand in
    JupyterLab: 00_plan starts a new run, which becomes the current run of the params file; every later notebook
    joins the current run while nothing has torn it down (06_report joins it in any state: it only reads files).
    The first output says which run it is. Without `step` (library callers), empty run_dir means a new run.
    """
    _notebook_setup()
    params_path = resolve_params(params_path)
    if run_dir:
        run_dir = Path(run_dir)
        if not (run_dir / "run.json").exists():
            raise RunDirError(
                f"{run_dir} is not a run directory (no run.json): pass one created by `r1lab run`, "
                "or leave run_dir empty to join the current run of the params file"
            )
        ctx = RunContext(load_experiment(params_path), Path(params_path).resolve(), run_dir)
        if step:
            print(f"{step}: run {_short(ctx)} ({run_state(run_dir).describe()})")
        return ctx
    if step is None:
        ctx = new_run(params_path)
        print(f"new run directory: {ctx.run_dir}")
        return ctx
    exp = load_experiment(params_path)
    current = current_run(outputs_root(exp.outputs.root) / exp.name, params_path)
    state = run_state(current) if current else None
    first = step[:2] == "00"
    if current and state and not first and (state.joinable or step[:2] == "06"):
        ctx = RunContext(exp, Path(params_path).resolve(), current)
        print(
            f"{step}: joined the current run of {params_key(params_path)}: {_short(ctx)} ({state.describe()})"
        )
    else:
        why = (
            "00_plan starts a run"
            if first
            else f"the current run {current.name} is {state.state}"
            if current and state
            else "no run yet"
        )
        ctx = new_run(params_path)
        print(f"{step}: new run {_short(ctx)} ({why}); it is now the current run of {params_key(params_path)}, "
              "which the next notebooks join")  # fmt: skip
        if current and state and state.live:
            print(f"  the previous run {current.name} still holds {state.live} resource(s): "
                  f"`r1lab teardown {current}` deletes them")  # fmt: skip
    record_join(ctx.run_dir, step, "by hand")
    _join_provider(ctx, step)
    return ctx


def _short(ctx: RunContext) -> str:
    return f"{ctx.exp.name}/{ctx.run_id} in {ctx.run_dir.parent}"


def _join_provider(ctx: RunContext, step: str) -> None:
    """Stepping by hand on the twin: find (or start, recorded in this run's ledger) the twin, as the runner does."""
    if ctx.exp.provider.kind != "twin" or os.environ.get("RUNPOD_API_BASE") or step[:2] in ("00", "06"):
        return
    from r1lab.cloud.twin import runner_hooks  # only the twin: real providers need nothing started

    os.environ.update(runner_hooks.start_for_run(ctx))


def _notebook_setup() -> None:
    """Inside a kernel: plotly figures embed plotly.js and load nothing from a CDN (not even MathJax), so the
    rendered HTML opens offline. Set when plotly.io is first imported (now, if it already is): a notebook that
    draws no figure does not pay plotly's import (seconds on a loaded machine)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is None:
        return
    _skip_rfc3987_syntax()
    _after_import("plotly.io", _offline_plotly)


def _skip_rfc3987_syntax() -> None:
    """Keep jsonschema from importing rfc3987-syntax in this kernel. plotly.io imports nbformat (for its notebook
    renderer), nbformat imports jsonschema, and jsonschema imports rfc3987-syntax when it is installed (jupyter's
    jsonschema[format-nongpl] installs it), which builds ~60 Earley parsers at import: ~1 s of the first chart in
    00 and 06. It serves only jsonschema's optional "iri"/"iri-reference" format checks, which nothing in a kernel
    runs (nbformat validates without format checks); jsonschema leaves those two formats unchecked without it."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None: `import` raises ImportError


def _offline_plotly() -> None:
    import plotly.io as pio
    from plotly.io._base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        """plotly's notebook renderer, without the MathJax <script> it always loads from cdnjs."""

        def to_mimebundle(self, fig_dict: dict) -> dict:
            html = pio.to_html(fig_dict, config=self.config, auto_play=self.auto_play, include_plotlyjs=False,
                               include_mathjax=False, post_script=self.post_script, full_html=False,
                               animation_opts=self.animation_opts, default_width="100%", default_height=525,
                               validate=False)  # fmt: skip
            return {"text/html": html}

    if os.environ.get("R1LAB_PLOTLY_CDN"):
        pio.renderers.default = "plotly_mimetype+notebook_connected"
        return
    pio.renderers["r1lab_notebook"] = OfflineNotebookRenderer()
    pio.renderers.default = "plotly_mimetype+r1lab_notebook"


def _after_import(name: str, configure: Callable[[], None]) -> None:
    """Run `configure` once `name` is imported: now if it is, else right after its module first executes."""
    if name in sys.modules:
        configure()
        return
    if any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        return  # a kernel that opens the run twice: one hook is enough

    sys.meta_path.insert(0, _AfterImport(name, configure))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds `name` with the other finders and wraps its loader so `configure` runs after the module executed."""

    def __init__(self, name: str, configure: Callable[[], None]) -> None:
        self.name, self.configure = name, configure

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, configure = spec.loader, self.configure

        class Loader(importlib.abc.Loader):
            def create_module(self, s: Any) -> Any:
                return loader.create_module(s)

            def exec_module(self, module: Any) -> None:
                module.__loader__ = loader
                loader.exec_module(module)
                configure()

        spec.loader = Loader()
        return spec
