"""The fault suite: `r1lab run` on the twin killed with SIGKILL, SIGHUP, SIGTERM and SIGINT at provisioning, Ray
start, load and teardown, then `r1lab reap --all`; afterwards no pod, volume, SSH key, network namespace or
process the run started is left, the ledger holds nothing live, the requests completed before the kill are on
disk (at most 1 s of them lost), `--resume` gives exact counts, and a budget-capped run stops at its cap.

Everything is real but the GPUs (the twin: RunPod's API emulated, pods are namespaces with sshd, real Ray, Dynamo
and HTTP load). `make test` runs a bounded subset (BOUNDED, printed with the table at the end); the full 4 x 4
matrix, the resume test and the budget run go with `pytest tests/test_faults.py --faults` (marker `faults`). Each
case adds a row to the closing table of faults and outcomes (signal x phase: rc, the run's own teardown, what was
left before and after `r1lab reap --all`, requests lost against the Dynamo frontend's own count, resume counts),
printed at the end of the session and appended to $R1LAB_FAULT_TABLE (JSON lines) when set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from r1lab.cloud.twin.api import Twin
from r1lab.teardown import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "tests" / "data" / "twin-faults.yaml"
HF = "hf_FaultSuitePlanted0123456789abcdefgh"
SIGNALS = {
    "SIGKILL": signal.SIGKILL,
    "SIGHUP": signal.SIGHUP,
    "SIGTERM": signal.SIGTERM,
    "SIGINT": signal.SIGINT,
}
EXIT = {"SIGHUP": 129, "SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL}
# make test's bounded subset (about 9 min here): a closed terminal during provisioning, a polite kill in the middle
# of the load (the records checked against the frontend's count; the teardown of a whole Dynamo deployment), and the
# budget-capped run (stops in 02-04); Ray start and teardown kills, the other signals and the resume test (about 7
# min) need --faults: each full-pipeline case costs 3-6 min on this machine, more than make test's share allows.
BOUNDED = {("SIGHUP", "provisioning"), ("SIGTERM", "load")}
LOAD_RECORDS_BEFORE_KILL = 16
# Bounded cases run in `make test` once seen green on this machine; until then they are behind --faults like the
# rest (R1LAB_FAULTS=bounded runs the whole bounded subset).
# seen: SIGHUP-provisioning 96 s and budget 168 s (load 45); SIGTERM-load 277 s (load 11, 2026-12-02)
SEEN_GREEN = {"SIGHUP-provisioning", "budget", "SIGTERM-load"}


class Run:
    """One `r1lab run` of the faults params in its own outputs and twin state dir."""

    def __init__(self, root: Path, params: Path = PARAMS, resume: Path | None = None) -> None:
        self.root = root
        self.outputs, self.twin_dir = root / "outputs", root / "twin"
        # host pods (asked for): these tests kill the runner and check teardown and reap, not what is on a pod;
        # bare pods (the default) would add each pod's setup to every run of the matrix. test_demo and
        # test_lab_walk tear bare pods down.
        self.env = {**os.environ, "R1LAB_OUTPUTS": str(self.outputs), "R1LAB_TWIN_DIR": str(self.twin_dir),
                    "R1LAB_PROGRESS": "plain", "HF_TOKEN": HF, "R1LAB_TWIN_PODS": "host"}  # fmt: skip
        for k in ("RUNPOD_API_KEY", "RUNPOD_API_BASE"):
            self.env.pop(k, None)
        cmd = [sys.executable, "-m", "r1lab.cli", "run", str(params)]
        cmd += ["--resume", str(resume)] if resume else []
        self.stderr = open(root / f"runner-{int(time.time() * 1000)}.err", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=self.stderr
        )

    @property
    def run_dir(self) -> Path | None:
        found = [p.parent for p in self.outputs.glob("*/*/run.json")]
        return found[0] if found else None

    def events(self) -> list[dict]:
        rd = self.run_dir
        if rd is None or not (rd / "runner.jsonl").exists():
            return []
        out = []
        for line in (rd / "runner.jsonl").read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.err()[-4000:]}")
            if time.monotonic() > deadline:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=300)
                pytest.fail(f"{what} did not happen within {timeout:.0f} s:\n{self.err()[-4000:]}")
            time.sleep(0.2)

    def err(self) -> str:
        self.stderr.flush()
        return Path(self.stderr.name).read_text(errors="replace")

    def records(self) -> list[dict]:
        rd = self.run_dir
        path = rd / "load" / "sweep" / "requests.jsonl" if rd else None
        if path is None or not path.exists():
            return []
        from r1lab.bench.records import read_jsonl

        return read_jsonl(path)


def _started(run: Run, nb: str) -> bool:
    return any(e.get("event") == "notebook_started" and e.get("notebook") == nb for e in run.events())


def _at(run: Run, phase: str) -> Callable[[], bool]:
    def ledger_kinds() -> set[str]:
        rd = run.run_dir
        return {e["kind"] for e in Ledger(rd).entries()} if rd else set()

    def started(nb: str) -> bool:
        return _started(run, nb)

    return {
        "provisioning": lambda: "runpod-volume" in ledger_kinds(),  # 01: the volume is being created
        "ray": lambda: started("03_multi_node") and "serve-daemons" in ledger_kinds(),  # Ray is starting
        "load": lambda: len(run.records()) >= LOAD_RECORDS_BEFORE_KILL,  # 05, in the middle of the point
        "teardown": lambda: any(e.get("event") == "teardown_started" for e in run.events()),
    }[phase]


def _ours(root: Path) -> list[str]:
    """Processes this run started, wherever: their command line or environment names the test's directory
    (kernels, load workers, Prometheus, exporters, the twin's daemon and pods' processes)."""
    needle = str(root).encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            if needle in cmdline or needle in (d / "environ").read_bytes():
                shown = cmdline.replace(b"\0", b" ")[:160].decode(errors="replace")
                found.append(f"{d.name}: {shown}")
        except OSError:
            continue
    return found


def _reap(run: Run, api_base: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in run.env.items() if k not in ("HF_TOKEN",)}
    return subprocess.run(
        [sys.executable, "-m", "r1lab.cli", "reap", "--all", "--outputs", str(run.outputs), "--api-base", api_base],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _api_base(run: Run) -> str:
    info = json.loads((run.twin_dir / "twin.json").read_text())
    return info["url"]


def _assert_nothing_left(run: Run, api_base: str) -> str:
    reap = _reap(run, api_base)
    assert reap.returncode == 0, reap.stdout + reap.stderr
    twin = Twin(run.twin_dir)
    assert not twin.running(), "reap --all takes down the twin the run started"
    left = twin.leftovers()
    assert not any(left.values()), left  # namespaces, links, routes, rules, mounts, processes
    assert Ledger(run.run_dir).live() == []
    deadline = time.monotonic() + 20  # a kernel orphaned by SIGKILL notices its parent is gone within ~1 s
    while (procs := _ours(run.root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert procs == [], procs
    for f in run.run_dir.rglob("*"):
        if f.is_file():
            assert HF.encode() not in f.read_bytes(), f
    return "0 pods/volumes/keys (twin down), 0 namespaces/mounts/processes, 0 live ledger"


def _served(run: Run) -> int | None:
    """The Dynamo frontend's own count of requests it finished (`dynamo_frontend_requests_total`, every status):
    the truth the records are checked against. None when the frontend cannot be read."""
    import re
    import urllib.request

    rd = run.run_dir
    try:
        url = json.loads((rd / "state.json").read_text())["endpoint"]["private_url"]
        base = url[: -len("/v1")] if url.endswith("/v1") else url
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = re.findall(r"^dynamo_frontend_requests_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return int(sum(float(v) for v in rows)) if rows else None


def _rented(run: Run) -> dict[str, int] | None:
    """Pods, volumes and SSH keys the twin's API still lists (None: the twin is down, so none)."""
    from r1lab.cloud.runpod import RunPodClient

    twin = Twin(run.twin_dir)
    if not twin.running():
        return None
    env = twin.client_env()
    client = RunPodClient(api_key=env["RUNPOD_API_KEY"], base_url=env["RUNPOD_API_BASE"])
    try:
        return {"pods": len(client.list_pods()), "volumes": len(client.list_volumes()),
                "keys": len(client.get_ssh_keys())}  # fmt: skip
    except Exception:  # noqa: BLE001 - the table says so; the reap checks below still decide
        return None


TABLE: list[dict] = []
TABLE_FILE = os.environ.get("R1LAB_FAULT_TABLE")  # also append each row here (JSON lines), across pytest runs


def _failed(exc: BaseException) -> str:
    """A failed case's cell in the closing table: the first line of what went wrong."""
    return f"FAILED: {(str(exc) or type(exc).__name__).splitlines()[0][:120]}"


def _row(**row: object) -> None:
    TABLE.append(row)
    if TABLE_FILE:
        with open(TABLE_FILE, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def fault_table_lines() -> list[str]:
    """The closing table of faults and outcomes for this session's cases (conftest prints it at the end)."""
    return table_lines(TABLE) if TABLE else []


def table_lines(rows: list[dict]) -> list[str]:
    head = ["case", "rc", "teardown by the run", "left after the run", "after reap --all", "requests lost",
            "resume"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(k, "")) for k in
                                     ("case", "rc", "teardown", "left", "after_reap", "lost", "resume")) + " |")  # fmt: skip
    return out


def _lost(recs: list[dict], served: int | None, base: int | None, t_kill: float) -> tuple[str, float]:
    """Completed requests the records miss, against the frontend's count at the kill; in seconds of load."""
    done = [r for r in recs if r.get("t_end")]
    span = max(r["t_end"] for r in done) - min(r["t_send"] for r in done if r.get("t_send"))
    rate = len(done) / span if span > 0 else float("inf")
    lag = t_kill - max(r["t_end"] for r in done if not r.get("error"))
    if served is None or base is None:
        return f"frontend unreadable; last record {lag:+.2f} s before the kill", max(lag, 0.0)
    lost = max(0, served - base - len(recs))
    return (f"{lost} ({lost / rate:.2f} s at {rate:.1f} req/s): frontend {served - base} done, {len(recs)} "
            f"recorded"), lost / rate  # fmt: skip


def _marks(case: str, bounded: bool) -> tuple[pytest.MarkDecorator, ...]:
    if not bounded:
        return (pytest.mark.faults,)
    return (
        (pytest.mark.faults_bounded,)
        if case in SEEN_GREEN
        else (pytest.mark.faults, pytest.mark.faults_bounded)
    )


CASES = [
    pytest.param(sig, phase, id=f"{sig}-{phase}", marks=_marks(f"{sig}-{phase}", (sig, phase) in BOUNDED))
    for sig in SIGNALS
    for phase in ("provisioning", "ray", "load", "teardown")
]


@pytest.mark.parametrize("sig,phase", CASES)
def test_kill_then_reap_leaves_nothing(tmp_path: Path, sig: str, phase: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the twin needs root: run the test suite as root (CI does)")
    run = Run(tmp_path)
    row: dict = {"case": f"{sig} at {phase}"}
    try:
        base = served = None
        if phase == "load":
            run.wait_for("05 started", lambda: _started(run, "05_load_test"))
            base = _served(run)  # what 04's checks sent, before the load
        run.wait_for(
            f"phase {phase}", _at(run, phase), timeout=900 if phase == "teardown" else 600
        )  # 00-06 first
        if phase == "load":
            served = _served(run)
        t_kill = time.time()
        before = len(run.records())
        run.proc.send_signal(SIGNALS[sig])
        rc = run.proc.wait(timeout=400)
        api_base = _api_base(run)
        err = run.err()
        row["rc"] = rc
        td = [x.strip() for x in err.splitlines() if x.strip().startswith("teardown:")]
        row["teardown"] = td[-1] if td else "none (killed outright)"
        live = Ledger(run.run_dir).live()
        rented = _rented(run)
        row["left"] = (f"{len(live)} live ledger; " + (", ".join(f"{v} {k}" for k, v in rented.items())
                       if rented else "twin down"))  # fmt: skip
        if phase == "teardown" and sig != "SIGKILL":
            assert rc == 0 and "teardown in progress" in err, err[-3000:]  # shielded: the teardown goes on
        else:
            assert rc == EXIT[sig], err[-3000:]
        if sig != "SIGKILL":
            assert "teardown:" in err and " 0 failed" in err, err[-3000:]
        assert "Traceback" not in err and "ZMQError" not in err, err[-3000:]
        if phase == "load":
            recs = run.records()
            ids = [r["request_id"] for r in recs]
            assert len(ids) == len(set(ids)) >= before  # nothing torn, nothing twice
            done = [r["t_end"] for r in recs if r.get("t_end") and not r.get("error")]
            # completions come every ~0.1-0.5 s at this load: the records reach the kill to within 1 s
            assert max(done) >= t_kill - 1.0, (max(done), t_kill)
            row["lost"], lost_s = _lost(recs, served, base, t_kill)
            assert lost_s <= 1.0, row["lost"]
        row["after_reap"] = _assert_nothing_left(run, api_base)
        row["resume"] = "test_resume_* (SIGKILL at load)" if (sig, phase) == ("SIGKILL", "load") else "n/a"
    except BaseException as exc:
        row["after_reap"] = row.get("after_reap") or _failed(exc)
        raise
    finally:
        _row(**row)
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
            if run.run_dir is not None:
                _reap(run, _api_base(run))


@pytest.mark.parametrize("_", [pytest.param(0, marks=_marks("resume", True), id="bounded")])
def test_resume_after_a_kill_mid_load_gives_exact_counts(_: int, tmp_path: Path) -> None:
    """SIGKILL in the second of two load points (no teardown: pods, twin and Dynamo stay up), then --resume: the
    first point is carried over as it was, the cut-short one runs again whole; each has exactly its 60 requests,
    and the frontend served exactly 60 more (only the cut-short point again)."""
    old = "concurrency: [8], input_tokens: 128, output_tokens: 32, requests_per_point: 120"
    assert old in PARAMS.read_text()
    params = tmp_path / "twin-faults.yaml"
    params.write_text(PARAMS.read_text().replace(old, old.replace("[8]", "[4, 8]").replace("120", "60")))
    run, again = Run(tmp_path, params=params), None
    row: dict = {"case": "SIGKILL at load (2nd of 2 points), then --resume"}
    try:
        run.wait_for("05 started", lambda: _started(run, "05_load_test"))
        base = _served(run)
        in_c8 = lambda: sum(r["point"] == "c8" for r in run.records()) >= LOAD_RECORDS_BEFORE_KILL  # noqa: E731
        run.wait_for("the second load point half done", in_c8)
        served = _served(run)
        t_kill = time.time()
        run.proc.kill()  # no teardown: the pods, the twin and the Dynamo deployment stay up for the resume
        run.proc.wait(timeout=60)
        time.sleep(2)  # the orphaned kernel and its load workers notice within ~1 s and write nothing more
        rd = run.run_dir
        recs = run.records()
        row["rc"], row["teardown"] = run.proc.returncode, "none (killed outright)"
        live, rented = Ledger(rd).live(), _rented(run)
        row["left"] = f"{len(live)} live ledger; " + ", ".join(f"{v} {k}" for k, v in (rented or {}).items())
        first = len(recs)
        assert 0 < first < 120
        assert len({r["request_id"] for r in recs}) == first  # nothing torn, nothing twice
        row["lost"], lost_s = _lost(recs, served, base, t_kill)
        assert lost_s <= 1.0, row["lost"]  # at most 1 s of completed requests lost
        c4_before = [x for x in (rd / "load" / "sweep" / "requests.jsonl").read_text().splitlines(keepends=True)
                     if json.loads(x)["point"] == "c4"]  # fmt: skip
        again = Run(tmp_path, params=params, resume=rd)
        again.wait_for("the resumed run's report", lambda: _started(again, "06_report"), timeout=600)
        served_again = _served(again)
        rc = again.proc.wait(timeout=600)
        err = again.err()
        assert rc == 0, err[-4000:]
        assert "kept aside" in err and "= 04_dynamo: complete" in err and "sweep c4 complete" in err, err[
            -3000:
        ]
        recs = again.records()
        per_point = {p: sum(r["point"] == p for r in recs) for p in ("c4", "c8")}
        assert per_point == {"c4": 60, "c8": 60} and len({r["request_id"] for r in recs}) == 120, per_point
        lines = (rd / "load" / "sweep" / "requests.jsonl").read_text().splitlines(keepends=True)
        assert [x for x in lines if json.loads(x)["point"] == "c4"] == c4_before  # carried over as it was
        aside = (rd / "attempts" / "05_load_test-1" / "load" / "sweep" / "requests.jsonl").read_text()
        assert len(aside.splitlines()) >= first
        if base is not None and served_again is not None:
            # the frontend's count over both attempts: the first's records (aside), c8's 60 again, and at most the
            # 8 streams the kill cut mid-answer (counted by the frontend, never completed to the client)
            extra = (served_again - base) - (len(aside.splitlines()) + 60)
            assert 0 <= extra <= 8, (served_again - base, len(aside.splitlines()))
        summary = json.loads((rd / "summary.json").read_text())
        assert sorted(p["requests"] for p in summary["points"]) == [60, 60], summary["points"]
        assert "CUT SHORT" not in err
        row["resume"] = (f"c4 {per_point['c4']} carried, c8 {per_point['c8']} re-run (planned 60 each); "
                         f"{len(aside.splitlines())} cut-short records aside")  # fmt: skip
        row["after_reap"] = _assert_nothing_left(again, _api_base(again))
    except BaseException as exc:
        row["after_reap"] = row.get("after_reap") or _failed(exc)
        raise
    finally:
        _row(**row)
        for r in (run, again):
            if r is not None and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        if run.run_dir is not None and Twin(run.twin_dir).running():
            _reap(run, _api_base(run))


@pytest.mark.parametrize("_", [pytest.param(0, marks=_marks("budget", True), id="bounded")])
def test_budget_capped_twin_run_stops_at_its_cap(_: int, tmp_path: Path) -> None:
    text = PARAMS.read_text()
    old = "budget_usd: 100\n  budget_hours: 2"
    assert old in text
    params = tmp_path / "twin-faults.yaml"
    # the serving pods cost $25.52/h each on RunPod (what the twin prices them at): $0.25 is reached in 02-04;
    # the guard polls every 3.6 s (budget_hours / 100), so it stops within $0.06 of the cap
    params.write_text(text.replace(old, "budget_usd: 0.25\n  budget_hours: 0.1"))
    run = Run(tmp_path, params=params)
    rc = run.proc.wait(timeout=600)
    err = run.err()
    assert rc == 3, err[-4000:]
    budget = json.loads((run.run_dir / "budget.json").read_text())
    assert budget["tripped"].startswith("cost $") and "cap $0.25" in budget["tripped"], budget
    assert 0.25 <= budget["usd"] <= 0.25 + 51.04 * 3.6 / 3600 + 0.05, budget
    assert "budget guard" in err and "teardown:" in err
    assert not (run.run_dir / "summary.json").exists()
    from r1lab.outcome import run_outcome

    assert "stopped by the budget guard" in run_outcome(run.run_dir).line()
    _assert_nothing_left(run, _api_base(run))
