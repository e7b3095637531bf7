"""`r1lab run PARAMS`: execute the notebook suite with papermill into a new run directory, and always tear down.

Each notebook gets only two parameters, `params_path` and `run_dir` (never a secret). Executed notebooks are
saved as they finish (a failing one too, with its error) and rendered to HTML with plotly.js embedded.
Whatever happens — success, a failing cell, Ctrl-C, SIGTERM — the `finally` tears down every resource in the
run's ledger; a second Ctrl-C during teardown is refused, because a half-done teardown leaks paid pods.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.config import ParamsError
from r1lab.progress import fmt_duration, relay
from r1lab.rundir import REPO_ROOT, RunContext, open_run
from r1lab.secrets import redact
from r1lab.teardown import teardown_run

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NBCONVERT_TEMPLATES = Path(__file__).parent / "data" / "nbconvert"  # r1lab: JupyterLab's, without CDN scripts
HIDE_CODE = {"06_report"}  # shared as a report: rendered without code cells


class RunFailed(RuntimeError):
    """A notebook failed: names the notebook, the cell and the error."""


class Terminated(BaseException):
    """SIGTERM, SIGHUP or SIGQUIT, turned into an exception so `finally` blocks (teardown) run."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"signal {signal.Signals(signum).name}")


# A closed terminal (SIGHUP), Ctrl-\ (SIGQUIT) and a polite kill (SIGTERM) all tear down like Ctrl-C.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class Step:
    key: str  # "02"
    name: str  # "02_single_node"
    path: Path


def discover_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Step]:
    steps = []
    for p in sorted(directory.glob("[0-9][0-9]_*.ipynb")):
        steps.append(Step(p.name[:2], p.stem, p))
    return steps


def select(steps: list[Step], only: str | None) -> list[Step]:
    if not only:
        return steps
    wanted = {k.strip().zfill(2) for k in only.split(",") if k.strip()}
    unknown = wanted - {s.key for s in steps}
    if unknown:
        raise SystemExit(
            f"r1lab run: --only names no notebook {sorted(unknown)}; have {[s.name for s in steps]}"
        )
    return [s for s in steps if s.key in wanted]


class EventLog:
    """runner.jsonl in the run dir: what ran, when, how it ended (also what --resume reads)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "runner.jsonl"

    def write(self, event: str, **fields: Any) -> None:
        entry = {
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "event": event,
            **fields,
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(redact(json.dumps(entry, default=str)) + "\n")

    def completed(self) -> set[str]:
        if not self.path.exists():
            return set()
        done = set()
        for line in self.path.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") == "notebook_completed":
                done.add(e["notebook"])
        return done


def render_html(ipynb: Path, hide_code: bool = False) -> Path:
    """Render an executed notebook to a self-contained HTML file next to it."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    exporter = HTMLExporter(
        exclude_input=hide_code, exclude_input_prompt=hide_code, exclude_output_prompt=hide_code,
        template_name="r1lab", extra_template_basedirs=[str(NBCONVERT_TEMPLATES)],
    )  # fmt: skip
    body, _ = exporter.from_notebook_node(nb)
    out = ipynb.with_suffix(".html")
    out.write_text(redact(body), encoding="utf-8")
    return out


def _say(text: str) -> None:
    """Print to stderr; a terminal that is gone (SIGHUP: writes fail with EIO) must not stop a teardown."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _failure_from(exc: Exception, step: Step) -> str:
    """One clear line: notebook, cell, error."""
    cell = getattr(exc, "exec_count", None) or getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    return f"{step.name}: cell {cell}: {ename}: {evalue}"


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGQUIT raise Terminated (so finally runs); SIGINT stays KeyboardInterrupt."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    old = {sig: signal.signal(sig, on_term) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextmanager
def _shielded() -> Iterator[None]:
    """During teardown, Ctrl-C and SIGTERM are acknowledged but do not interrupt it."""

    def refuse(signum: int, frame: Any) -> None:
        _say(
            "\nr1lab: teardown in progress; interrupting it could leave paid resources running. "
            "Waiting for it to finish..."
        )

    old = {sig: signal.signal(sig, refuse) for sig in (signal.SIGINT, *TERMINATING_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _start_provider(ctx: RunContext) -> dict[str, str]:
    """Bring up what the provider needs for this run; returns environment for the notebook kernels."""
    if ctx.exp.provider.kind != "twin":
        return {}
    from r1lab.cloud.twin import runner_hooks  # the twin's lifecycle, recorded in this run's ledger

    return runner_hooks.start_for_run(ctx)


def kernel_config() -> Any:
    """Kernels get CurveZMQ keys from the manager (no "running over TCP without encryption" warnings)."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}})


def default_kernel() -> str:
    """The project's kernel (`r1lab`, installed by bootstrap) when this Python has it; else `python3`."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "r1lab" if "r1lab" in KernelSpecManager().find_kernel_specs() else "python3"


def execute(ctx: RunContext, steps: list[Step], resume: bool = False, kernel_name: str | None = None) -> None:
    """Execute the steps in order into ctx.run_dir; raise RunFailed naming the notebook and cell."""
    import papermill as pm

    kernel_name = kernel_name or default_kernel()

    log = EventLog(ctx.run_dir)
    done = log.completed() if resume else set()
    env_extra = _start_provider(ctx)
    for i, step in enumerate(steps, 1):
        out = ctx.run_dir / "notebooks" / f"{step.name}.ipynb"
        if step.name in done:
            _say(f"= {step.name}: complete in this run dir, skipped (--resume)")
            continue
        if out.exists():  # a failed earlier attempt (resume): keep it, never overwrite
            out.rename(out.with_name(f"{step.name}.failed-{int(time.time())}.ipynb"))
        _say(f"▶ [{i}/{len(steps)}] {step.name}")
        log.write("notebook_started", notebook=step.name)
        start = time.monotonic()
        env_backup = dict(os.environ)
        os.environ.update(env_extra)
        os.environ["PAPERMILL_EXECUTION"] = "1"
        try:
            with relay(f"[{i}/{len(steps)}] {step.name}", ctx.run_dir / "logs" / "progress.jsonl"):
                pm.execute_notebook(
                    str(step.path),
                    str(out),
                    parameters={"params_path": str(ctx.params_path), "run_dir": str(ctx.run_dir)},
                    kernel_name=kernel_name,
                    cwd=str(REPO_ROOT),
                    progress_bar=False,
                    log_output=False,
                    request_save_on_cell_execute=True,
                    config=kernel_config(),
                )
        except Exception as exc:  # papermill's PapermillExecutionError, kernel deaths, ...
            elapsed = time.monotonic() - start
            reason = redact(_failure_from(exc, step))
            log.write("notebook_failed", notebook=step.name, seconds=round(elapsed, 1), error=reason)
            if out.exists():
                render_html(out, step.name in HIDE_CODE)
            raise RunFailed(f"{reason}\n  executed notebook (with the error): {out}") from None
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
        elapsed = time.monotonic() - start
        render_html(out, step.name in HIDE_CODE)
        log.write("notebook_completed", notebook=step.name, seconds=round(elapsed, 1))
        _say(f"✓ {step.name} ({fmt_duration(elapsed)})")


def run(
    params: str, only: str | None = None, resume_dir: str | None = None, notebook_dir: Path = NOTEBOOK_DIR
) -> tuple[RunContext, int]:
    """Run the suite; returns the context and an exit code. Teardown always happens."""
    ctx = open_run(params, resume_dir or "")
    log = EventLog(ctx.run_dir)
    _say(f"run directory: {ctx.run_dir}")
    log.write("run_started", params=str(params), only=only, resume=bool(resume_dir))
    code = 0
    try:
        with _signals_raise():
            execute(ctx, select(discover_notebooks(notebook_dir), only), resume=bool(resume_dir))
    except RunFailed as exc:
        _say(f"✗ {exc}")
        code = 1
    except (KeyboardInterrupt, Terminated) as exc:
        reason = signal.Signals(exc.signum).name if isinstance(exc, Terminated) else type(exc).__name__
        _say(f"\n✗ interrupted ({reason}); tearing down")
        log.write("run_interrupted", reason=reason)
        # the shell's convention: 128 + the signal's number (Ctrl-C 130, SIGHUP 129, SIGQUIT 131, SIGTERM 143)
        code = 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        with _shielded():
            log.write("teardown_started")
            report = teardown_run(ctx.run_dir)
            log.write("teardown", deleted=len(report.deleted), failed=len(report.failed))
            _say(str(report))
            if not report.ok:
                _say(
                    f"  some resources may still exist: `r1lab reap --run {ctx.run_id}` retries; check the "
                    "provider's console"
                )
                code = code or 2
    log.write("run_finished", code=code)
    return ctx, code


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="r1lab run", description="Run the notebook suite for a params file."
    )
    parser.add_argument("params", help="params/*.yaml")
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,02")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run: skip notebooks already complete")
    parser.add_argument(
        "--notebooks", type=Path, default=NOTEBOOK_DIR, help="notebook directory (default: the suite)"
    )
    args = parser.parse_args(argv)
    try:
        ctx, code = run(args.params, args.only, args.resume, args.notebooks)
    except ParamsError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    if (ctx.run_dir / "summary.json").exists():
        from r1lab.demo import summary_lines  # the same summary block `make demo` prints

        _say("\n" + "\n".join(summary_lines(ctx.run_dir)))
    try:
        print(ctx.run_dir)
    except OSError:  # stdout was a terminal that is gone (SIGHUP)
        pass
    return code
