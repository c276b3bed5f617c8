"""Type and range checks of numbers, shared by every CLI flag and every config loader.

Why one place: a negative overlap, a string learning rate or a zero batch must be refused before any
work starts, with one line that names the flag (or the config file and dotted key) and the value,
and every stage must say it the same way. Two faces of the same rules:

- `flag(rule)` is an argparse `type=` callable: `parser.add_argument("--tile", type=flag(INT_POSITIVE))`;
  argparse then refuses `--tile 0` before `main` runs.
- `check_config(cfg, rules, source)` walks dotted keys of a loaded config, turns integral floats such
  as the reference's `1e4` into ints, and raises `UserError("CFG: 'train.lr' must be ...")`.
"""
import argparse
import math
from dataclasses import dataclass
from typing import Any

from ubf.core.errors import UserError


@dataclass(frozen=True)
class Number:
    """An integer or real number in [low, high] (`open_low`/`open_high`: the end is excluded)."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    optional: bool = False   # None allowed (the config's "off")

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            where = f" in {left}{_show(self.low)}, {_show(self.high)}{right}"
        elif self.low is not None:
            where = f" {'>' if self.open_low else '>='} {_show(self.low)}"
        elif self.high is not None:
            where = f" {'<' if self.open_high else '<='} {_show(self.high)}"
        else:
            where = ""
        return kind + where + (" (or null)" if self.optional else "")

    def convert(self, value: Any) -> Any:
        """The checked value (ints for integer rules); ValueError with the reason when it does not fit."""
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        if self.integer:
            if isinstance(value, float):
                if not value.is_integer():  # the reference writes 1e4 for 10000; 2.5 epochs is a mistake
                    raise ValueError(f"must be {self.describe()}, got {value!r}")
                value = int(value)
        else:
            value = float(value)
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if too_low or too_high:
            raise ValueError(f"must be {self.describe()}, got {value!r}")
        return value


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


INT_POSITIVE = Number(integer=True, low=1)
INT_NONNEGATIVE = Number(integer=True, low=0)
INT_ANY = Number(integer=True)
FLOAT_POSITIVE = Number(low=0, open_low=True)
FLOAT_NONNEGATIVE = Number(low=0)
PROBABILITY = Number(low=0, high=1)
FRACTION_OPEN = Number(low=0, high=1, open_low=True, open_high=True)
FLOAT_ANY = Number()


def optional(rule: Number) -> Number:
    """The same rule with null accepted (a config's "off" value)."""
    return Number(rule.integer, rule.low, rule.high, rule.open_low, rule.open_high, optional=True)


def flag(rule: Number):
    """An argparse `type=` that parses the text and checks it against `rule`."""
    def parse(text: str):
        try:
            number = float(text) if not rule.integer else _parse_int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, got {text!r}") from None
        try:
            return rule.convert(number)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = "integer" if rule.integer else "number"  # argparse names the type in its messages
    return parse


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)  # "1e4" is fine, "2.5" is refused by the rule
        if value.is_integer():
            return int(value)
        raise ValueError(text) from None


def check_value(value: Any, rule: Number, name: str) -> Any:
    """`value` checked against `rule`; `name` ("--tile" or "CFG: 'train.lr'") starts the error line."""
    try:
        return rule.convert(value)
    except ValueError as err:
        raise UserError(f"{name} {err}") from None


def check_config(cfg: dict, rules: dict[str, Any], source: str) -> dict:
    """Check dotted keys of `cfg` against their rules in place; integral floats become ints.

    A rule is a `Number`, a tuple of allowed values, `bool` (true/false only), or
    `("list", Number)` for a non-empty list of numbers.
    """
    for dotted, rule in rules.items():
        parent, key = _parent(cfg, dotted)
        if parent is None:
            continue
        value = parent[key]
        name = f"{source}: '{dotted}'"
        if isinstance(rule, Number):
            parent[key] = check_value(value, rule, name)
        elif rule is bool:
            if not isinstance(value, bool):
                raise UserError(f"{name} must be true or false, got {value!r}")
        elif isinstance(rule, tuple) and len(rule) == 2 and rule[0] == "list":
            if not isinstance(value, (list, tuple)) or not value:
                raise UserError(f"{name} must be a non-empty list, each item {rule[1].describe()}, got {value!r}")
            parent[key] = [check_value(item, rule[1], f"{name}[{index}]") for index, item in enumerate(value)]
        else:
            if value not in rule:
                raise UserError(f"{name} is {value!r}, expected one of {', '.join(map(repr, rule))}")
    return cfg


def _parent(cfg: dict, dotted: str):
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return None, None
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        return None, None
    return node, parts[-1]


def check_band_indices(indices, n_bands: int, what: str) -> list[int]:
    """Band indices in [0, n_bands): a negative index is refused rather than counted from the end."""
    indices = list(indices)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, float)) or float(index) != int(index):
            raise UserError(f"{what}: band index {index!r} is not an integer")
    bad = [int(i) for i in indices if not 0 <= int(i) < n_bands]
    if bad:
        raise UserError(f"{what}: band indices {bad} out of range for a {n_bands}-band cube (0 to {n_bands - 1})")
    return [int(i) for i in indices]
