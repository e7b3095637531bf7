"""The committed notebooks: no outputs, a parameters cell of literals, thin cells that call into r1lab."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = [
    "00_plan",
    "01_environment",
    "02_single_node",
    "03_multi_node",
    "04_dynamo",
    "05_load_test",
    "06_report",
]


def test_the_suite_is_complete() -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean_and_thin(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.get("outputs"), f"{path.name}: a cell carries outputs"
        assert cell.get("execution_count") is None, f"{path.name}: a cell carries an execution count"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse(params[0].source)
    names = set()
    for stmt in tree.body:
        # typed (papermill --help-notebook shows the type) assignments of literals only: papermill overrides them
        assert isinstance(stmt, ast.AnnAssign), (
            f"{path.name}: the parameters cell holds typed assignments only"
        )
        ast.literal_eval(stmt.value)
        names.add(stmt.target.id)
    assert {"params_path", "run_dir"} <= names
    # the notebook says which run it joins: open_run gets its own name as step
    assert f'r1lab.open_run(params_path, run_dir, step="{path.stem}")' in "".join(c.source for c in code)
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{path.name}: no narrative"
    for cell in code:
        src = cell.source
        # thin: logic lives in r1lab; notebooks import r1lab and nothing else of ours
        assert len(src.splitlines()) <= 25, f"{path.name}: a code cell of {len(src.splitlines())} lines"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                pytest.fail(f"{path.name}: defines {node.name}: put logic into r1lab")
        assert "teardown" not in src or "teardown_run" not in src, (
            f"{path.name}: teardown belongs to the runner"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_help_shows_typed_parameters(path: Path) -> None:
    """What `papermill --help-notebook` prints: every parameter with its type (not "Unknown type") and help."""
    import papermill as pm

    params = pm.inspect_notebook(str(path))
    assert (
        params["params_path"]["inferred_type_name"] == "str"
        and params["run_dir"]["inferred_type_name"] == "str"
    )
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", ""), f"{path.name}: {name} has no type"
        assert p["help"], f"{path.name}: {name} has no help comment"
