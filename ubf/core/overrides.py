"""`--set key=value ...`: any config key from the command line, typed by its default's type.

`train.lr=1e-4` becomes the float 1e-4 because the default of `train.lr` is a float; a key that the
defaults do not have is refused with the nearest one that exists. Values of keys whose default is
None, a list or a dict are read as JSON (`data.bands=[10,20,30]`, `train.grad_clip=1.0`), falling
back to the text itself.
"""
import argparse
import difflib
import json
from typing import Any

from ubf.core.errors import UserError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="set_values",
                        help="set any config key, e.g. --set train.lr=1e-4 model.unet.dropout=0.1")


def dotted_keys(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: default} of every leaf of a nested dict (a dict value is a node, not a leaf)."""
    keys = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys.update(dotted_keys(value, dotted + "."))
        else:
            keys[dotted] = value
    return keys


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def typed_value(text: str, default: Any, key: str, source: str = "--set") -> Any:
    """`text` converted to the type of `default`; a one-line error when it does not fit."""
    def refuse(kind: str):
        raise UserError(f"{source} {key}={text}: expected {kind} (the default is {default!r})")

    if text.lower() in ("null", "none") and not isinstance(default, str):
        return None
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        refuse("true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            refuse("an integer")
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            refuse("a number")
    if isinstance(default, str):
        return text
    value = _json_or_text(text)
    if isinstance(default, list) and not isinstance(value, list):
        refuse("a JSON list such as [1,2,3]")
    if isinstance(default, dict) and not isinstance(value, dict):
        refuse("a JSON object")
    return value


def parse_set_values(pairs: list[str] | None, defaults: dict, source: str = "--set") -> dict[str, Any]:
    """{dotted key: typed value} of `KEY=VALUE` strings, checked against the keys of `defaults`."""
    known = dotted_keys(defaults)
    values = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{source} {pair}: expected KEY=VALUE, e.g. train.lr=1e-4")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{source} {key}: unknown config key{hint}")
        values[key] = typed_value(text, known[key], key, source)
    return values
