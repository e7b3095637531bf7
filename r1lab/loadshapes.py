"""Load shapes as registered classes: each owns its validation, its load points (what the planner models and what
the bench runs: one list for both), its loop and its summary.

Modelled on guidellm's `benchmark/profiles` (a profile per `type_`, registered by name, that resolves and checks its
own arguments and yields its strategies). A shape reads a scenario (r1lab.config.Scenario, or anything with its
fields) and imports nothing of r1lab, so config (validation), perf (the planner) and bench (the load generator) all
read the same class. Adding a shape: one subclass with `@register`, and its name in config's `Scenario.shape`.

- concurrency: one closed-loop point per value of `concurrency` (a sweep; the summary finds its knee);
- ramp: the same points, as timed steps (`duration_s` each) one after another;
- poisson: one open-loop point per `rate` (requests/s), optionally capped at `max_concurrency`;
- stress: one load held for `duration_s` (a concurrency, or a rate: then open loop), with trend checks;
- trace: a Mooncake-style trace replayed open-loop at its own times (its points come from the trace file).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

# (concurrency, rate) of one point: exactly one is set (trace: both may)
Load = tuple[int | None, float | None]


class LoadShape:
    """One kind of load. Subclasses set `name` and override what differs."""

    name: ClassVar[str] = ""
    timed: ClassVar[bool] = False  # needs duration_s
    can_close: ClassVar[bool] = True  # may run closed loop (multi-turn conversations need it)
    holds_knee: ClassVar[bool] = False  # may hold an earlier sweep's knee (`at_knee_of`)
    extends_to_knee: ClassVar[bool] = False  # a sweep that may extend itself until its knee (`until_knee`)
    summary: ClassVar[str | None] = None  # "saturation" (a knee over a sweep) | "trends" (a held load) | None

    def problems(self, sc: Any) -> Iterator[tuple[str, str]]:
        """(key, message) for each rule of this shape the scenario breaks, in the order they are checked."""
        if self.timed and sc.duration_s is None:
            yield "duration_s", f"a {self.name} scenario is timed: set duration_s (seconds)"

    def loads(self, sc: Any) -> list[Load]:
        """The scenario's load points, (concurrency, None) closed loop or (cap or None, rate) open loop."""
        return [(c, None) for c in sc.concurrency]

    def loop(self, sc: Any) -> str:
        """ "closed" (users that send when their last answer ended) or "open" (arrivals on a clock)."""
        return "closed"

    def summarized_as(self, sc: Any, closed_points: int) -> str | None:
        """What the summary derives from this scenario's points (`closed_points`: those at a concurrency)."""
        if self.summary == "saturation":
            return "saturation" if closed_points >= 2 else None
        return self.summary


SHAPES: dict[str, LoadShape] = {}


def register(cls: type[LoadShape]) -> type[LoadShape]:
    """Class decorator: make a shape known by its `name`."""
    if not cls.name or cls.name in SHAPES:
        raise ValueError(f"load shape {cls.__name__}: name {cls.name!r} empty or taken")
    SHAPES[cls.name] = cls()
    return cls


def shape_of(sc: Any) -> LoadShape:
    """The registered shape of a scenario (`sc.shape`)."""
    try:
        return SHAPES[sc.shape]
    except KeyError:
        raise ValueError(f"unknown load shape {sc.shape!r}: expected one of {sorted(SHAPES)}") from None


@register
class Concurrency(LoadShape):
    name = "concurrency"
    summary = "saturation"
    extends_to_knee = True


@register
class Ramp(LoadShape):
    name = "ramp"
    timed = True
    summary = "saturation"


@register
class Poisson(LoadShape):
    name = "poisson"
    can_close = False

    def problems(self, sc: Any) -> Iterator[tuple[str, str]]:
        if not sc.rate:
            yield "rate", "a poisson scenario needs a list of request rates (requests/s)"
        yield from super().problems(sc)

    def loads(self, sc: Any) -> list[Load]:
        return [(None, r) for r in sc.rate]

    def loop(self, sc: Any) -> str:
        return "open"


@register
class Stress(LoadShape):
    name = "stress"
    timed = True
    summary = "trends"
    holds_knee = True

    def problems(self, sc: Any) -> Iterator[tuple[str, str]]:
        yield from super().problems(sc)
        if len(sc.rate or sc.concurrency) != 1:
            yield "concurrency", "a stress phase holds one load: give one concurrency (or one rate)"

    def loads(self, sc: Any) -> list[Load]:
        return [(None, r) for r in sc.rate] if sc.rate else super().loads(sc)

    def loop(self, sc: Any) -> str:
        return "open" if sc.rate else "closed"


@register
class Trace(LoadShape):
    """A trace's points come from its file (bench.traces reads it; the planner models its mean rate)."""

    name = "trace"
    can_close = False

    def loads(self, sc: Any) -> list[Load]:
        return [(sc.max_concurrency, None)]

    def loop(self, sc: Any) -> str:
        return "open"
