"""Secrets come from the environment only; this module reads them and masks them in anything written."""

from __future__ import annotations

import os
import re

SECRET_ENV_VARS = (
    "RUNPOD_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "R1LAB_VLLM_API_KEY",
    "VLLM_API_KEY",
    "RAY_AUTH_TOKEN",
)
_MASK = "***"


def get_secret(name: str) -> str | None:
    """Return a secret from the environment (None if unset or empty)."""
    value = os.environ.get(name, "").strip()
    return value or None


def secret_values() -> list[str]:
    """The current values of every known secret (long enough to be worth masking)."""
    return [v for n in SECRET_ENV_VARS if (v := get_secret(n)) and len(v) >= 6]


# Hugging Face (hf_ + 34 today) and RunPod (rpa_ ...) API keys by their shape, short ones too: 8+ characters
# after the prefix with at least one digit or capital, so package names (hf_transfer, hf_xet) are not keys.
_KEY_PATTERNS = [
    re.compile(r"\b(hf_)(?=[A-Za-z0-9]*[A-Z0-9])[A-Za-z0-9]{8,}"),
    re.compile(r"\b(rpa_)(?=[A-Za-z0-9]*[A-Z0-9])[A-Za-z0-9]{8,}"),
]
_TOKEN_PATTERNS = [
    re.compile(r"(Authorization:\s*Bearer\s+)\S+", re.IGNORECASE),
    re.compile(r"(--api-key[ =])\S+"),
    *_KEY_PATTERNS,
]


def looks_like_api_key(text: str) -> bool:
    """Whether `text` holds something shaped like a Hugging Face or RunPod API key."""
    return any(p.search(text) for p in _KEY_PATTERNS)


def redact(text: str) -> str:
    """Mask every known secret value and anything shaped like a bearer token or API key."""
    for value in sorted(secret_values(), key=len, reverse=True):
        text = text.replace(value, _MASK)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + _MASK, text)
    return text


def scrubbed_env(extra_allowed: tuple[str, ...] = ()) -> dict[str, str]:
    """A copy of os.environ without secrets, for processes that must not see them (e.g. notebook kernels)."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV_VARS or k in extra_allowed}
