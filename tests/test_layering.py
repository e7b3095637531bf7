"""A module imports only what stands below it in design.md's flow (the layering, checked).

Every `import`/`from ... import` of every r1lab module counts, top-level and function-local alike (also under
TYPE_CHECKING), and so does a handler named by string ("r1lab.pkg.mod:func", resolved with importlib later).
An arrow between two units (a top-level module or a subpackage of r1lab) is allowed only from a higher rank to a
strictly lower one; units of the same rank never import each other (hub, serve, bench and monitor are peers: bench
never touches cloud or serve). Imports inside one unit are free.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import r1lab

ROOT = Path(r1lab.__file__).parent

# The flow, bottom to top (design.md: params --config--> Experiment --runner--> stages perf, cloud, hub, serve,
# bench, report; the runner on top). Derived from design.md and from what the code does today.
LAYERS: list[set[str]] = [
    # facts and leaf utilities: import nothing of r1lab
    {"secrets", "gpus", "model", "progress", "outcome", "tinymodel", "nbstrip", "pins", "loadshapes"},
    # the validated Experiment; the process/ssh execution primitives; the resolved deployment's types and files
    # (what resolve builds, read by every layer above, perf included)
    {"config", "execution", "resolved"},
    # the resource ledger and its teardown handlers
    {"teardown"},
    # modelling: performance (imports nothing of ours but model, the GPU catalog and progress), prices -> $,
    # the list of run directories
    {"perf", "cost", "runs"},
    # the resolved deployment: the Experiment turned once per run into what every layer above reads
    {"resolve"},
    # the provider: RunPod client, pods, ledger, budget guard, the twin
    {"cloud"},
    # what runs on the pods and against them: peers, never importing each other
    {"hub", "serve", "bench", "monitor"},
    # views over results; GPU calibration (perf profiles from pods); the pods' preflight (what the rendered
    # commands need, checked over the executors before anything costly)
    {"report", "calibrate", "preflight"},
    # run directories and their context
    {"rundir"},
    # the experiment's steps, then the stages (one module per step of the experiment) built on them
    {"steps"},
    {"stages"},
    # papermill execution, then the demo that drives it
    {"runner"},
    {"demo"},
    # entry points: the package (notebooks' `r1lab.open_run`), then the commands
    {"__init__"},
    {"cli", "teardown_cli", "plan_cli"},
]

# perf's own, stricter rule (design.md: perf imports nothing of ours but model; here also the GPU catalog,
# progress, the load shapes and the resolved deployment's types)
PERF_MAY_IMPORT = {"model", "gpus", "progress", "loadshapes", "resolved"}
# below in rank but still never imported (design.md: bench never imports cloud; nor serve: it only speaks HTTP)
NEVER: dict[str, set[str]] = {"bench": {"cloud", "serve"}}

# Arrows against the flow that exist today, each with why it is still there. The test fails on any arrow not
# listed here, and on a listed one that is gone (delete it from the list then).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

_HANDLER = re.compile(r"^(r1lab(?:\.\w+)+):\w+$")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = ("r1lab", *p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def arrows() -> set[tuple[str, str]]:
    """(importer, imported) for every r1lab module, imported names resolved to the module that holds them."""
    mods = modules()
    out: set[tuple[str, str]] = set()
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = _HANDLER.match(node.value)
                targets = [m.group(1)] if m else []
            for t in targets:
                if t == "r1lab" or t.startswith("r1lab."):
                    owner = _owner(t, mods)
                    if owner and owner != mod:
                        out.add((mod, owner))
    return out


def unit(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


RANK = {u: i for i, layer in enumerate(LAYERS) for u in layer}


def against_the_flow(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    bad = set()
    for a, b in edges:
        ua, ub = unit(a), unit(b)
        if ua == ub:
            continue
        if RANK[ub] >= RANK[ua] or (ua == "perf" and ub not in PERF_MAY_IMPORT) or ub in NEVER.get(ua, ()):
            bad.add((a, b))
    return bad


def test_every_unit_has_a_place_in_the_flow() -> None:
    units = {unit(m) for m in modules()}
    assert units - set(RANK) == set(), "new module or package: give it a layer in LAYERS"
    assert set(RANK) - units == set(), "a unit in LAYERS no longer exists"


def test_no_new_arrow_against_the_flow() -> None:
    bad = against_the_flow(arrows())
    new = sorted(bad - set(KNOWN_EXCEPTIONS))
    assert not new, (
        "imports against design.md's flow (import what stands below, or pass it in):\n"
        + "\n".join(
            f"  {a} -> {b}  ({unit(a)} rank {RANK[unit(a)]} -> {unit(b)} rank {RANK[unit(b)]})"
            for a, b in new
        )
    )
    gone = sorted(set(KNOWN_EXCEPTIONS) - bad)
    assert not gone, f"known exceptions no longer there (delete them from KNOWN_EXCEPTIONS): {gone}"


def test_the_checker_sees_function_local_and_string_arrows() -> None:
    """The parser itself: a function-local import and a handler string are arrows (else the test could not fail)."""
    edges = arrows()
    assert ("r1lab.runner", "r1lab.report.brief") in edges  # function-local (inside a function of runner.py)
    assert ("r1lab.cloud.twin", "r1lab.cloud.twin.api") in edges  # a handler named by string
    assert ("r1lab.serve.launch", "r1lab.teardown") in edges  # and the ordinary kind
    assert against_the_flow({("r1lab.bench.loadgen", "r1lab.cloud.pods")}) == {
        ("r1lab.bench.loadgen", "r1lab.cloud.pods")
    }
    assert against_the_flow({("r1lab.perf.planner", "r1lab.config")})
    assert not against_the_flow({("r1lab.serve.vllm", "r1lab.perf.memory")})


def graph_summary() -> str:
    """Modules, arrows between units, arrows against the flow (printed by `python tests/test_layering.py`)."""
    edges = arrows()
    cross = [(a, b) for a, b in edges if unit(a) != unit(b)]
    bad = against_the_flow(edges)
    by_unit = Counter((unit(a), unit(b)) for a, b in bad)
    lines = [
        f"modules {len(modules())}, arrows {len(edges)} ({len(cross)} between units), against the flow {len(bad)}"
    ]
    lines += [f"  {a} -> {b}: {n}" for (a, b), n in sorted(by_unit.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    print(graph_summary())
