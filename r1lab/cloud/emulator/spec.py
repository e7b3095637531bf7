"""RunPod's OpenAPI 3.1 spec as JSON Schema 2020-12 validators for request bodies and responses."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_URI = "urn:r1lab:runpod-openapi-v2"


def spec_path() -> Path:
    return Path(str(resources.files("r1lab") / "data" / "runpod" / "openapi-v2.json"))


def _ptr(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Spec:
    """Look up operations and validate bodies against the schemas the spec names for them."""

    def __init__(self, path: Path | None = None) -> None:
        self.doc: dict[str, Any] = json.loads((path or spec_path()).read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self._registry = Registry().with_resource(_URI, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    def validator(self, pointer: str) -> Draft202012Validator:
        v = self._validators.get(pointer)
        if v is None:
            v = Draft202012Validator({"$ref": f"{_URI}#{pointer}"}, registry=self._registry)
            self._validators[pointer] = v
        return v

    def errors(self, pointer: str, instance: Any) -> list[str]:
        """Every violation, as '$.path: message' strings (the form the API's 422 `errors` uses)."""
        out = []
        for e in sorted(self.validator(pointer).iter_errors(instance), key=lambda e: list(e.path)):
            out.append(f"{e.json_path}: {e.message}")
        return out

    def operation(self, path: str, method: str) -> dict[str, Any]:
        return self.doc["paths"][path][method.lower()]

    def request_pointer(self, path: str, method: str) -> str | None:
        op = self.operation(path, method)
        if "requestBody" not in op:
            return None
        return _ptr("paths", path, method.lower(), "requestBody", "content", "application/json", "schema")

    def response_pointer(self, path: str, method: str, status: int) -> tuple[str | None, str | None]:
        """(schema pointer, content type) the spec gives for this status (falling back to `default`).
        Pointer None means the spec documents no body for it; raises KeyError if the status is undocumented."""
        responses = self.operation(path, method)["responses"]
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            raise KeyError(f"{method.upper()} {path} documents no response {status}")
        base = ("paths", path, method.lower(), "responses", key)
        resp = responses[key]
        if "$ref" in resp:
            name = resp["$ref"].rsplit("/", 1)[1]
            resp = self.doc["components"]["responses"][name]
            base = ("components", "responses", name)
        content = resp.get("content") or {}
        if not content:
            return None, None
        ctype = next(iter(content))
        return _ptr(*base, "content", ctype, "schema"), ctype


@cache
def load_spec() -> Spec:
    return Spec()
