"""The one shim the CPU engine venv needs (installed there as `r1lab_cpu_shim.py` + a `.pth` by bootstrap).

ai-dynamo 1.6.1's `dynamo.vllm` imports `transformers.models.qwen2_vl.image_processing_qwen2_vl` (for
`smart_resize`) at start-up, and that module imports torchvision at top. PyPI's torchvision is a CUDA build that
fails to import beside torch 2.13.0+cpu ('operator torchvision::nms does not exist'), and the CPU build lives only
on download.pytorch.org. So, only when torchvision cannot be imported, that one module name is served by
transformers' own PIL variant (`image_processing_pil_qwen2_vl`, the same `smart_resize`, no torchvision).
Nothing else is touched. `R1LAB_NO_CPU_SHIM=1` turns it off (tests/test_dynamo_vllm_cpu.py checks it is still
needed). This file must import nothing of r1lab: it runs at interpreter start in the engine's venv.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys

TARGET = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
STANDIN = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"


class _QwenImageProcessorFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name != TARGET:
            return None
        try:
            import torchvision  # noqa: F401
        except Exception:  # the CUDA wheel raises RuntimeError, a missing one ModuleNotFoundError
            return importlib.util.spec_from_loader(name, _AliasLoader())
        return None


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return importlib.import_module(STANDIN)

    def exec_module(self, module):  # type: ignore[no-untyped-def]
        return None


def install() -> None:
    if os.environ.get("R1LAB_NO_CPU_SHIM") != "1" and not any(
        isinstance(f, _QwenImageProcessorFinder) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QwenImageProcessorFinder())


install()
