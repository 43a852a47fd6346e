"""Term weights that change during training, for :class:`segloss.losses.CompoundLoss`.

A weight is a number (constant) or a schedule of the training progress t — the optimizer step or the epoch
(``unit``), as counted when the batch starts:

* ``{kind: constant, value: w}``
* ``{kind: linear, start: a, end: b, begin: t0, length: T}``: w = a + (b − a)·clamp((t − t0)/T, 0, 1) — a ramp
  that holds a before t0 and b after t0 + T (Kervadec et al.'s boundary-loss schedule is linear: the region
  weight from 1 down by 0.01 per epoch);
* ``{kind: step, start: a, factor: f, every: k, low: l, high: h}``: w = clamp(a·f^⌊t/k⌋, l, h).

Weights are plain numbers on the host (no device work, no sync), a pure function of (step, epoch), so a
resumed training continues the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

KINDS = ("constant", "linear", "step")
UNITS = ("step", "epoch")
NEEDED = {"constant": {"value"}, "linear": {"start", "end", "length"}, "step": {"start", "factor", "every"}}
OPTIONAL = {"constant": set(), "linear": {"begin"}, "step": {"low", "high"}}


class WeightSchedule:
    def __init__(self, kind: str = "constant", unit: str = "epoch", **params: float) -> None:
        if kind not in KINDS or unit not in UNITS:
            raise ValueError(
                f"weight schedule kind={kind!r}, unit={unit!r}: choose a kind in {KINDS}, a unit in {UNITS}"
            )
        needed = NEEDED[kind]
        allowed = needed | OPTIONAL[kind]
        missing, unknown = sorted(needed - set(params)), sorted(set(params) - allowed)
        if missing or unknown:
            raise ValueError(
                f"a {kind} weight schedule needs {sorted(needed)} (optional: {sorted(allowed - needed)}); "
                f"missing {missing}, unknown {unknown}"
            )
        if (kind == "linear" and params["length"] <= 0) or (kind == "step" and params["every"] <= 0):
            raise ValueError(f"a {kind} weight schedule needs a positive length/every, got {params}")
        self.kind, self.unit, self.params = kind, unit, {k: float(v) for k, v in params.items()}

    @classmethod
    def of(cls, spec: float | Mapping) -> WeightSchedule:
        """A schedule from a config value: a number is a constant weight."""
        if isinstance(spec, int | float):
            return cls("constant", value=float(spec))
        return cls(**dict(spec))

    @property
    def constant(self) -> bool:
        return self.kind == "constant"

    def __call__(self, step: int, epoch: int) -> float:
        t = step if self.unit == "step" else epoch
        p = self.params
        if self.kind == "constant":
            return p["value"]
        if self.kind == "linear":
            share = min(max((t - p.get("begin", 0.0)) / p["length"], 0.0), 1.0)
            return p["start"] + (p["end"] - p["start"]) * share
        value = p["start"] * p["factor"] ** math.floor(t / p["every"])
        return min(max(value, p.get("low", -math.inf)), p.get("high", math.inf))

    def __repr__(self) -> str:
        return f"WeightSchedule({self.kind}, unit={self.unit}, {self.params})"
