"""`r1lab run PARAMS`: execute the notebook suite with papermill into a new run directory, and always tear down.

Each notebook gets only two parameters, `params_path` and `run_dir` (never a secret). Executed notebooks are
saved as they finish (a failing one too, with its error) and rendered to HTML with plotly.js embedded.
Whatever happens — success, a failing cell, Ctrl-C, SIGTERM — the `finally` tears down every resource in the
run's ledger; a second Ctrl-C during teardown is refused, because a half-done teardown leaks paid pods.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import logging
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
from r1lab.progress import PROGRESS_FILE_ENV, fmt_duration, relay
from r1lab.rundir import REPO_ROOT, RunContext, open_run
from r1lab.secrets import redact
from r1lab.teardown import teardown_run

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NBCONVERT_TEMPLATES = Path(__file__).parent / "data" / "nbconvert"  # r1lab: JupyterLab's, without CDN scripts
HIDE_CODE = {"06_report"}  # shared as a report: rendered without code cells


class RunFailed(RuntimeError):
    """A notebook failed: names the notebook, the cell and the error."""


class RunRefused(RuntimeError):
    """The run cannot succeed (the plan says the deployment does not fit, or nothing would be measured):
    refused before anything is rented."""


class BudgetStopped(BaseException):
    """The budget guard tore the run down at its cap; raised in the main thread to stop the notebook."""


class Terminated(BaseException):
    """SIGTERM, SIGHUP or SIGQUIT, turned into an exception so `finally` blocks (teardown) run."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"signal {signal.Signals(signum).name}")


# A closed terminal (SIGHUP), Ctrl-\ (SIGQUIT) and a polite kill (SIGTERM) all tear down like Ctrl-C.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
BUDGET_SIGNAL = signal.SIGUSR1  # the guard's thread -> the main thread: stop the notebook now
EXIT_BUDGET = 3  # the run stopped at its budget cap (torn down)
# Notebooks that rent (pods, a volume) and what each one's attempt writes: on --resume an unfinished attempt's
# outputs are moved aside to attempts/<notebook>-<n>/ before the retry, so attempts never mix; the load points it
# completed are carried back (r1lab.bench.attempts), the cut-short ones run again whole.
RENTING = {"01", "02", "03", "04", "05"}
ATTEMPT_OUTPUTS = {
    "05": ("load", "summary.json", "summary.csv", "requests.parquet", "metrics.parquet", "prometheus")
}
# Secrets a notebook's kernel (and whatever it starts: Prometheus, exporters, load workers, Chromium) gets only
# when it needs them: HF_TOKEN only where the weights are downloaded.
HF_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
NEEDS_HF_TOKEN = {"01"}


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


class _ExpectedKernelDeath(logging.Filter):
    """When a signal stops a notebook, nbclient's pending cell task ends in DeadKernelError, which asyncio logs
    at exit as 'Task exception was never retrieved' with a traceback. The kernel's death is expected then and is
    already reported (notebook_failed, the teardown lines): keep that traceback off the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "DeadKernelError")


logging.getLogger("asyncio").addFilter(_ExpectedKernelDeath())


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGQUIT raise Terminated (so finally runs); SIGINT stays KeyboardInterrupt."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    def on_budget(signum: int, frame: Any) -> None:
        raise BudgetStopped()

    old = {sig: signal.signal(sig, on_term) for sig in TERMINATING_SIGNALS}
    old[BUDGET_SIGNAL] = signal.signal(BUDGET_SIGNAL, on_budget)
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
    old[BUDGET_SIGNAL] = signal.signal(BUDGET_SIGNAL, signal.SIG_IGN)
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


def refuse_to_rent(ctx: RunContext, steps: list[Step]) -> None:
    """Raise RunRefused, before anything is created, when the run cannot succeed: a step rents and the planner
    says the params' deployment does not fit, or the load test runs and there is nothing to measure."""
    keys = {s.key for s in steps}
    exp = ctx.exp
    if "05" in keys and not exp.load.scenarios:
        raise RunRefused(
            f"{ctx.params_path}: load.scenarios is empty: the run would rent pods and measure nothing. "
            "Fix: add at least one scenario (see params/twin.yaml), or run without the load test: --only 00,01,02"
        )
    if keys & RENTING:
        from r1lab.perf.planner import evaluate_topology, point_dict, resolved_topology

        r = ctx.resolved  # the params' deployment as the run resolved it
        verdict = evaluate_topology(resolved_topology(r), exp, engine=r.engine,
                                    load_points=[point_dict(p) for p in r.load_points],
                                    memory=r.serving_group.memory)  # fmt: skip
        if not verdict["fits"]:
            raise RunRefused(
                f"{ctx.params_path}: the plan says this deployment DOES NOT FIT: {verdict['reason']}. Nothing was "
                f"rented. Fix the params (see `r1lab plan {ctx.params_path}` for topologies that fit)"
            )


def _set_aside(ctx: RunContext, step: Step) -> Path | None:
    """Move an unfinished earlier attempt's outputs of this step to attempts/<step>-<n>/ (never merged, never
    deleted); returns where they went."""
    present = [ctx.run_dir / n for n in ATTEMPT_OUTPUTS.get(step.key, ()) if (ctx.run_dir / n).exists()]
    if not present:
        return None
    n = 1
    while (ctx.run_dir / "attempts" / f"{step.name}-{n}").exists():
        n += 1
    dest = ctx.run_dir / "attempts" / f"{step.name}-{n}"
    dest.mkdir(parents=True)
    for p in present:
        p.rename(dest / p.name)
    return dest


def _mark_notebook(out: Path, text: str, hide_code: bool) -> None:
    """Append a markdown cell saying why the notebook stopped here (budget, signal) and re-render it."""
    import nbformat

    try:
        nb = nbformat.read(out, as_version=4)
        nb.cells.append(nbformat.v4.new_markdown_cell(f"**r1lab run stopped here:** {text}"))
        nbformat.write(nb, out)
        render_html(out, hide_code)
    except Exception:  # noqa: BLE001 - a torn notebook must not stop the teardown that follows
        pass


def _kernel_manager(log: Path) -> type:
    """A kernel manager whose kernel writes its own log (IPKernelApp messages, a ZMQError when the runner goes)
    to `log` instead of the runner's terminal."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:  # the kernel holds its own copy of the descriptor
                kw["stdout"] = kw["stderr"] = f
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


def _kernel_env(step: Step, env_extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **env_extra, "PAPERMILL_EXECUTION": "1"}
    if step.key not in NEEDS_HF_TOKEN:
        for name in HF_SECRETS:
            env.pop(name, None)
    return env


def _progress_file(ctx: RunContext) -> Path:
    return ctx.run_dir / "logs" / "progress.jsonl"


# what nbclient gives a python3 kernel it starts
NBCLIENT_IPYKERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]


class Kernels:
    """The kernels started beside papermill's own: the next notebook's kernel is started as the current notebook
    starts (a kernel takes ~0.6 s to come up; it boots while the current one runs), and a finished notebook's kernel
    is asked to shut down and left to exit while the next notebook runs (the graceful shutdown that papermill waits
    for: ~0.5 s). Each kernel gets exactly what papermill's would (its notebook's environment, its log, the repo
    as cwd, nbclient's arguments); the first notebook's is papermill's own, and the last notebook's shutdown is
    waited for inside its time. `close()` ends every kernel still here, on every path out of the run."""

    def __init__(self, kernel_name: str) -> None:
        self.kernel_name = kernel_name
        # notebook name -> its kernel manager (kernel running, not yet used)
        self.started: dict[str, Any] = {}
        self.closing: list[Any] = []  # kernel managers whose kernel was asked to shut down

    def start(self, ctx: RunContext, step: Step, env_extra: dict[str, str]) -> None:
        """Start `step`'s kernel now (papermill starts it as before when this fails)."""
        from jupyter_core.utils import run_sync

        km = _kernel_manager(ctx.run_dir / "logs" / "kernels" / f"{step.name}.log")(
            kernel_name=self.kernel_name, config=kernel_config()
        )
        env = {**_kernel_env(step, env_extra), PROGRESS_FILE_ENV: str(_progress_file(ctx))}
        try:
            args = list(NBCLIENT_IPYKERNEL_ARGS) if km.ipykernel else []
            run_sync(km.start_kernel)(extra_arguments=args, env=env, cwd=str(REPO_ROOT))
        except Exception:  # noqa: BLE001 - a kernel that cannot start here is started (and reported) by papermill
            return
        self.started[step.name] = km

    def take(self, step: Step) -> Any | None:
        return self.started.pop(step.name, None)

    def retire(self, km: Any, wait: bool) -> None:
        """Shut a used kernel down as nbclient would (interrupt, shutdown request, at most 5 s to exit, then
        SIGTERM/SIGKILL); `wait` False: only ask now, the rest in `close()` (or the next `retire`)."""
        from jupyter_core.utils import run_sync

        if wait:
            run_sync(km.shutdown_kernel)()
        else:
            try:
                run_sync(km.interrupt_kernel)()
                run_sync(km.request_shutdown)()
            except Exception:  # noqa: BLE001 - a kernel that died already: close() cleans up after it
                pass
            self.closing.append(km)
        self._reap()

    def _reap(self) -> None:
        from jupyter_core.utils import run_sync

        for km in list(self.closing):
            if not run_sync(km.is_alive)():
                self.closing.remove(km)
                run_sync(km.cleanup_resources)()

    def close(self) -> None:
        from jupyter_core.utils import run_sync

        while self.closing:
            km = self.closing.pop()
            try:
                run_sync(km.finish_shutdown)()
                run_sync(km.cleanup_resources)()
            except Exception:  # noqa: BLE001 - every kernel gets its turn; a lost one exits with its parent
                pass
        while self.started:
            _, km = self.started.popitem()
            try:
                run_sync(km.shutdown_kernel)()
            except Exception:  # noqa: BLE001
                pass


@functools.cache
def _prestarted_engine() -> str:
    """papermill's nbclient engine for a kernel that is already running (`km=`): nbclient leaves the kernel to its
    owner (`Kernels`, which shuts it down) and this engine closes the client's channels after the notebook.
    Defined and registered once, on the first notebook that uses it."""
    from papermill.clientwrap import PapermillNotebookClient  # type: ignore[import-untyped]
    from papermill.engines import NBClientEngine, papermill_engines  # type: ignore[import-untyped]
    from papermill.utils import merge_kwargs, remove_args  # type: ignore[import-untyped]

    class PrestartedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls, nb_man: Any, kernel_name: str, log_output: bool = False, stdout_file: Any = None,
            stderr_file: Any = None, start_timeout: int = 60, execution_timeout: Any = None, **kwargs: Any,
        ) -> Any:  # fmt: skip
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final = merge_kwargs(
                safe_kwargs, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                startup_timeout=start_timeout, kernel_name=kernel_name, log=logging.getLogger("papermill"),
                log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file,
            )  # fmt: skip
            client = PapermillNotebookClient(nb_man, **final)
            try:
                return client.execute()
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()

    papermill_engines.register("r1lab-prestarted", PrestartedEngine)
    return "r1lab-prestarted"


def _budget_guard(ctx: RunContext) -> Any:
    """The run's budget guard (every provider rents: RunPod bills, the twin's pods are priced as RunPod's)."""
    from r1lab.cloud.budget import BudgetGuard

    hours = ctx.exp.provider.budget_hours
    poll = min(30.0, max(1.0, hours * 3600 / 100))

    def stop_main(status: Any) -> None:
        _say(f"\n✗ budget guard: {status.tripped}; torn down")
        os.kill(os.getpid(), BUDGET_SIGNAL)

    return BudgetGuard(ctx.run_dir, ctx.exp, poll_s=poll, on_trip=stop_main)


def _still_standing(ctx: RunContext, done: set[str]) -> set[str]:
    """The completed notebooks a resume may skip: a renting one only while what it rented still stands. After a
    teardown (Ctrl-C, SIGTERM, the budget) or `r1lab reap`, the pods and volume are gone, so 01-05 run again."""
    from r1lab.teardown import Ledger

    rented = {n for n in done if n[:2] in RENTING}
    if not rented:
        return done
    ledger = Ledger(ctx.run_dir)
    ever, live = {e["kind"] for e in ledger.entries()}, {e["kind"] for e in ledger.live()}
    serving = any(n[:2] in RENTING - {"01"} for n in rented)
    volume_ok = "runpod-volume" in live or "runpod-volume" not in ever
    if volume_ok and (not serving or live & {"runpod-pod", "runpod-cluster"}):
        return done
    _say(f"= {', '.join(sorted(rented))}: what they rented was torn down since; they run again (--resume)")
    return done - rented


def execute(ctx: RunContext, steps: list[Step], resume: bool = False, kernel_name: str | None = None) -> None:
    """Execute the steps in order into ctx.run_dir; raise RunFailed naming the notebook and cell."""
    kernel_name = kernel_name or default_kernel()
    log = EventLog(ctx.run_dir)
    done = _still_standing(ctx, log.completed()) if resume else set()
    refuse_to_rent(ctx, [s for s in steps if s.name not in done])
    env_extra = _start_provider(ctx)
    todo = [s for s in steps if s.name not in done]
    kernels = Kernels(kernel_name)
    try:
        with _budget_guard(ctx):
            for i, step in enumerate(steps, 1):
                if step.name in done:
                    _say(f"= {step.name}: complete in this run dir, skipped (--resume)")
                    continue
                k = todo.index(step)
                nxt = todo[k + 1] if k + 1 < len(todo) else None
                if nxt is not None:
                    kernels.start(ctx, nxt, env_extra)  # boots while this notebook runs
                _execute_one(
                    ctx, step, f"[{i}/{len(steps)}]", env_extra, log, kernel_name, kernels, last=nxt is None
                )
    finally:
        kernels.close()


def _execute_one(
    ctx: RunContext, step: Step, counter: str, env_extra: dict[str, str], log: EventLog, kernel_name: str,
    kernels: Kernels | None = None, last: bool = True,
) -> None:  # fmt: skip
    import papermill as pm

    out = ctx.run_dir / "notebooks" / f"{step.name}.ipynb"
    if out.exists():  # a failed earlier attempt (resume): keep it, never overwrite
        out.rename(out.with_name(f"{step.name}.failed-{int(time.time())}.ipynb"))
    aside = _set_aside(ctx, step)
    if aside is not None:
        _say(f"  {step.name}: the earlier attempt's outputs are kept aside in {aside}")
        log.write("attempt_set_aside", notebook=step.name, path=str(aside))
        if step.key == "05":  # the points that attempt completed count; only the cut-short ones run again
            from r1lab.bench.attempts import carry_complete_points

            carried = carry_complete_points(aside / "load", ctx.run_dir / "load")
            for scenario, points in carried.items():
                _say(f"  {step.name}: {scenario} {', '.join(points)} complete in that attempt, carried over")
            log.write("points_carried", notebook=step.name, points=carried)
    _say(f"▶ {counter} {step.name}")
    log.write("notebook_started", notebook=step.name)
    start = time.monotonic()
    env_backup, kernel_env = dict(os.environ), _kernel_env(step, env_extra)
    os.environ.clear()
    os.environ.update(kernel_env)
    kernel_log = ctx.run_dir / "logs" / "kernels" / f"{step.name}.log"
    km = kernels.take(step) if kernels is not None else None  # started while the previous notebook ran
    given = {"engine_name": _prestarted_engine(), "km": km} if km is not None else {}
    try:
        try:
            with relay(f"{counter} {step.name}", _progress_file(ctx)):
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
                    kernel_manager_class=_kernel_manager(kernel_log),
                    **given,
                )
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
            if km is not None and kernels is not None:  # the last notebook's shutdown counts in its time
                kernels.retire(km, wait=last)
    except Exception as exc:  # papermill's PapermillExecutionError, kernel deaths, ...
        elapsed = time.monotonic() - start
        reason = redact(_failure_from(exc, step))
        log.write("notebook_failed", notebook=step.name, seconds=round(elapsed, 1), error=reason)
        if out.exists():
            render_html(out, step.name in HIDE_CODE)
        raise RunFailed(f"{reason}\n  executed notebook (with the error): {out}") from None
    # a signal or the budget guard: say so in the executed notebook, then go on up
    except BaseException as exc:
        if out.exists():
            budget = ctx.run_dir / "budget.json"
            if isinstance(exc, BudgetStopped) and budget.exists():
                why = "the budget guard tore the run down: " + json.loads(budget.read_text())["tripped"]
            else:
                name = signal.Signals(exc.signum).name if isinstance(exc, Terminated) else "SIGINT"
                why = f"interrupted ({name})"
            _mark_notebook(out, why + "; every resource in the ledger is torn down.", step.name in HIDE_CODE)
        raise
    finally:
        _redact_file(kernel_log)
    elapsed = time.monotonic() - start
    render_html(out, step.name in HIDE_CODE)
    log.write("notebook_completed", notebook=step.name, seconds=round(elapsed, 1))
    _say(f"✓ {step.name} ({fmt_duration(elapsed)})")


def _redact_file(path: Path) -> None:
    if path.exists():
        text = path.read_text(errors="replace")
        if redact(text) != text:
            path.write_text(redact(text))


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
    except RunRefused as exc:
        _say(f"✗ refused: {exc}")
        log.write("run_refused", reason=str(exc))
        code = 1
    except BudgetStopped:
        log.write("run_stopped_by_budget")
        code = EXIT_BUDGET
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
        from r1lab.report.brief import summary_lines  # the same summary block `make demo` prints

        _say("\n" + "\n".join(summary_lines(ctx.run_dir)))
    try:
        print(ctx.run_dir)
    except OSError:  # stdout was a terminal that is gone (SIGHUP)
        pass
    return code
