"""RunPod REST v2 emulator (see server.py) and the pod backends behind it (see backends.py)."""

from r1lab.cloud.emulator.backends import (
    LocalSshdBackend,
    PodBackend,
    PodHost,
    RecordOnlyBackend,
    make_backend,
)
from r1lab.cloud.emulator.server import FAULT_KINDS, Clock, Emulator, Fault, Timings

__all__ = [
    "FAULT_KINDS",
    "Clock",
    "Emulator",
    "Fault",
    "LocalSshdBackend",
    "PodBackend",
    "PodHost",
    "RecordOnlyBackend",
    "Timings",
    "make_backend",
]
