"""Version pins in `pods[].setup` lines, and the engine versions each Dynamo release was built against.

`ai-dynamo`'s `[vllm]` extra pins the vLLM and NIXL it runs with; installing it `--no-deps` next to another vLLM
never resolves the conflict, it only hides it until `dynamo.vllm` fails at import on the pod. `setup_conflict`
finds such a mix in one pod's setup lines so `r1lab validate` refuses it, naming both pins.

`DYNAMO_ENGINE_PINS` comes from the wheels' own metadata (ai-dynamo 1.6.1 METADATA: `Requires-Dist:
vllm[flashinfer,otel,runai]==0.31.0; extra == 'vllm'` and `nixl[cu13]==1.4.1; extra == 'vllm'`); a test checks
it against the installed wheel. Releases not listed are not checked.
"""

from __future__ import annotations

import re
import shlex

DYNAMO_ENGINE_PINS: dict[str, dict[str, str]] = {
    "1.6.1": {"vllm": "0.31.0", "nixl": "1.4.1"},
}
_EXTRAS = {"nixl": "nixl[cu13]"}  # how the [vllm] extra names them
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_pins(lines: list[str]) -> dict[str, str]:
    """`name==version` pins of the `pip install` / `uv pip install` commands in setup lines (names normalized,
    extras dropped); the last pin of a name wins, as the last install does."""
    pins: dict[str, str] = {}
    for line in lines:
        for part in re.split(r"&&|\|\||;", line):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            if "pip" not in words or "install" not in words:
                continue
            for w in words[words.index("install") + 1 :]:
                m = _PIN.match(w)
                if m:
                    pins[_norm(m.group(1))] = m.group(3)
    return pins


def setup_conflict(lines: list[str]) -> str | None:
    """Why these setup lines pin an engine mix that does not resolve (naming both pins), or None."""
    pins = setup_pins(lines)
    dynamo = pins.get("ai-dynamo")
    wants = DYNAMO_ENGINE_PINS.get(dynamo or "")
    if not wants:
        return None
    for engine, version in wants.items():
        have = pins.get(engine)
        if have is not None and have != version:
            need = " ".join(f"{_EXTRAS.get(k, k)}=={v}" for k, v in wants.items())
            return (
                f"pins {engine}=={have} and ai-dynamo=={dynamo}, which do not resolve together: ai-dynamo "
                f"{dynamo}'s [vllm] extra pins {need} (its wheel's metadata; --no-deps only hides the conflict "
                f"until dynamo.vllm fails at import): pin {need}, or the ai-dynamo release built for "
                f"{engine} {have}"
            )
    return None
