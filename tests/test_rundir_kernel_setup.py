"""What open_run sets up inside a notebook kernel: plotly offline, and jsonschema without rfc3987-syntax (whose
import builds ~60 parsers, ~1 s of the first chart) while nbformat still validates notebooks."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from IPython.core.interactiveshell import InteractiveShell
InteractiveShell.instance()  # what a kernel has: get_ipython() is not None
from r1lab import rundir
rundir._notebook_setup()
import plotly.io as pio
import plotly.io._renderers  # imports nbformat, which imports jsonschema
import nbformat
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
nbformat.validate(nb)
bad = nbformat.v4.new_notebook(); bad["cells"] = [{"cell_type": "nope"}]
try:
    nbformat.validate(bad)
except nbformat.ValidationError:
    print("invalid refused")
print(sys.modules["rfc3987_syntax"], pio.renderers.default)
"""


def test_a_kernel_imports_nbformat_without_rfc3987_syntax_and_still_validates() -> None:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["invalid refused", "None plotly_mimetype+r1lab_notebook"], r.stdout


def test_outside_a_kernel_nothing_is_changed() -> None:
    code = "from r1lab import rundir; rundir._notebook_setup(); import sys; print('rfc3987_syntax' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
