"""A config value's rule, stated once where the value is consumed.

A :class:`Rule` names the config key, says what the value must be and gives an example override. The
constructor that consumes the value calls :meth:`Rule.require` (one :class:`ConfigError` naming the key);
:func:`segloss.checks.check_config` reads the same rules from their homes
(``SegmentationModule.RULES``, ``NonFinitePolicy.RULES``, ``QualityMetrics.RULES``, ``SegmentationDataModule.RULES``,
``segloss.data.transforms.TRAIN_TRANSFORM_RULES``; the tables are declared in :mod:`segloss.utils.consumer_rules`,
which imports neither torch nor Lightning) to report every problem in one message before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from omegaconf import ListConfig

from segloss.errors import ConfigError


class Rule(NamedTuple):
    """``key`` (``model.nonfinite``), ``valid(value) -> bool``, what is ``expected``, an ``example`` override."""

    key: str
    valid: Callable[[object], bool]
    expected: str
    example: str

    def require(self, value) -> None:
        """Raise the one wording of a wrong value (:meth:`ConfigError.value`) unless ``value`` is valid."""
        if not self.valid(value):
            raise ConfigError.value(self.key, value, self.expected, self.example)


def require_all(rules: Mapping[str, Rule], values: Mapping[str, object]) -> None:
    """:meth:`Rule.require` for every argument named in ``rules`` (argument name → rule) that ``values`` holds."""
    for argument, rule in rules.items():
        if argument in values:
            rule.require(values[argument])


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_bool(value) -> bool:
    return isinstance(value, bool)


def int_at_least(low: int, allow_none: bool = False) -> Callable:
    return lambda v: (allow_none and v is None) or (is_int(v) and v >= low)


def number_above(low: float, allow_none: bool = False, inclusive: bool = False) -> Callable:
    return lambda v: (allow_none and v is None) or (is_number(v) and (v >= low if inclusive else v > low))


def number_between(low: float, high: float) -> Callable:
    """Strictly inside ``(low, high)``."""
    return lambda v: is_number(v) and low < v < high


def one_of(*choices, allow_none: bool = False) -> Callable:
    return lambda v: (allow_none and v is None) or v in choices


def size_pair(v) -> bool:
    return isinstance(v, list | tuple | ListConfig) and len(v) == 2 and all(is_int(x) and x > 0 for x in v)


def bool_rule(key: str, default: bool) -> Rule:
    """A ``true``/``false`` switch."""
    return Rule(key, is_bool, "true or false", f"{key}={str(default).lower()}")
