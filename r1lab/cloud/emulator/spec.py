"""RunPod's OpenAPI 3.1 spec as JSON Schema 2020-12 validators for request bodies and responses."""

from __future__ import annotations

import json
import re
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

    def errors(self, pointer: str, instance: Any, prefix: str = "$") -> list[str]:
        """Every violation, as '$.path: message' strings (the form the API's 422 `errors` uses).

        Unknown fields read as RunPod writes them ("$: additional properties 'bogus' not allowed") and name only
        the fields no subschema declares (jsonschema's `unevaluatedProperties` also counts the fields of a
        subschema that failed for another reason, e.g. a nested unknown field)."""
        out = []
        for e in sorted(
            self.validator(pointer).iter_errors(instance), key=lambda e: [str(p) for p in e.path]
        ):
            path = prefix + e.json_path[1:]
            if e.validator in ("unevaluatedProperties", "additionalProperties") and isinstance(
                e.instance, dict
            ):
                declared = self._declared(e.schema)
                extra = [k for k in e.instance if k not in declared]
                if extra:
                    names = ", ".join(f"'{k}'" for k in extra)
                    out.append(f"{path}: additional properties {names} not allowed")
                continue
            out.append(f"{path}: {e.message}")
        return out

    def _resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            target: Any = self.doc
            for part in node["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def _declared(self, schema: Any) -> set[str]:
        """Property names a schema declares, through $ref, allOf/anyOf/oneOf and if/then/else."""
        schema = self._resolve(schema)
        if not isinstance(schema, dict):
            return set()
        names = set(schema.get("properties") or {}) | set(schema.get("patternProperties") or {})
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(key) or []:
                names |= self._declared(sub)
        for key in ("if", "then", "else"):
            if key in schema:
                names |= self._declared(schema[key])
        return names

    def parameters(self, path: str, method: str) -> list[tuple[dict[str, Any], str]]:
        """(parameter, pointer to its schema) for every parameter of an operation, path-level ones included."""
        out = []
        item = self.doc["paths"][path]
        for where, params in (((path,), item.get("parameters") or []), ((path, method.lower()), self.operation(path, method).get("parameters") or [])):  # fmt: skip
            for i, p in enumerate(params):
                if "$ref" in p:
                    name = p["$ref"].rsplit("/", 1)[1]
                    out.append((self.doc["components"]["parameters"][name], _ptr("components", "parameters", name, "schema")))  # fmt: skip
                else:
                    out.append((p, _ptr("paths", *where, "parameters", str(i), "schema")))
        return out

    def query(self, path: str, method: str, raw: dict[str, list[str]]) -> tuple[dict[str, Any], list[str]]:
        """Parse the query string by the spec's parameters (form style; arrays comma-separated unless exploded)
        and validate each value against its schema: (typed values, '$query.name: message' errors).
        Parameters the spec does not name are ignored, as HTTP APIs do."""
        values: dict[str, Any] = {}
        errors: list[str] = []
        for param, pointer in self.parameters(path, method):
            if param.get("in") != "query" or param["name"] not in raw:
                continue
            name, texts = param["name"], raw[param["name"]]
            schema = self._resolve(param.get("schema") or {})
            if schema.get("type") == "array":
                items = self._resolve(schema.get("items") or {})
                parts = texts if param.get("explode", True) and len(texts) > 1 else texts[-1].split(",")
                value: Any = [_coerce(items, t) for t in parts]
            else:
                value = _coerce(schema, texts[-1])
            problems = self.errors(pointer, value, prefix=f"$query.{name}")
            if problems:
                errors += problems
            else:
                values[name] = value
        return values, errors

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
        base: tuple[str, ...] = ("paths", path, method.lower(), "responses", key)
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


def _coerce(schema: dict[str, Any], text: str) -> Any:
    """A query string's text as the JSON value its schema's type names (left a string when it is not one)."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds and re.fullmatch(r"-?\d+", text):
        return int(text)
    if "number" in kinds and re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
        return float(text)
    if "boolean" in kinds and text in ("true", "false"):
        return text == "true"
    if "null" in kinds and text == "null":
        return None
    return text


@cache
def load_spec() -> Spec:
    return Spec()
