"""`--set key=value ...`: any config key from the command line, typed by its default's type.

`train.lr=1e-4` becomes the float 1e-4 because the default of `train.lr` is a float; a key that the
defaults do not have is refused with the nearest one that exists. Values of keys whose default is
None, a list or a dict are read as JSON (`data.bands=[10,20,30]`, `train.grad_clip=1.0`), falling
back to the text itself.

A section takes a JSON object, which is MERGED into it key by key (`model.unet={"dropout": 0.1}`
sets model.unet.dropout and leaves the other model.unet keys as they were); every key in it is
checked like a dotted one. A key whose default is an empty object (free-form) is REPLACED by the
object given.
"""
import argparse
import difflib
import json
from typing import Any

from ubf.core.errors import UserError

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="set_values",
                        help="set any config key, e.g. --set train.lr=1e-4 model.unet.dropout=0.1; a section "
                             "takes a JSON object merged into it: --set 'model.unet={\"dropout\": 0.1}'")


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


def section_keys(tree: dict, prefix: str = "") -> dict[str, dict]:
    """{dotted key: default} of every non-empty dict node of a nested dict (the sections)."""
    sections = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            sections[f"{prefix}{key}"] = value
            sections.update(section_keys(value, f"{prefix}{key}."))
    return sections


def _unknown(key: str, known, source: str):
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"{source} {key}: unknown config key{hint}")


def typed_json_value(value: Any, default: Any, key: str, source: str = "--set") -> Any:
    """A value taken from a JSON object, checked against the type of `default` (numbers may be written 1e4)."""
    def refuse(kind: str):
        raise UserError(f"{source} {key}: expected {kind}, got {json.dumps(value)} (the default is {default!r})")

    if value is None or default is None:
        return value
    if isinstance(default, bool):
        return value if isinstance(value, bool) else refuse("true or false")
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else refuse("an integer")
    if isinstance(default, float):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else refuse("a number")
    for kind, name in ((str, "a string"), (list, "a JSON list"), (dict, "a JSON object")):
        if isinstance(default, kind):
            return value if isinstance(value, kind) else refuse(name)
    return value


def merged_section(key: str, text: str, section: dict, source: str = "--set") -> dict[str, Any]:
    """{dotted key: value} of the leaves a JSON object sets in `section` (merged: other keys untouched)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source} {key}: '{key}' is a section; expected a JSON object such as "
                        f"{key}={{\"name\": value}} ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict):
        raise UserError(f"{source} {key}: '{key}' is a section; expected a JSON object, got {text}")
    return _object_leaves(key, value, section, source)


def _object_leaves(key: str, value: dict, section: dict, source: str) -> dict[str, Any]:
    values = {}
    for name, item in value.items():
        dotted = f"{key}.{name}"
        if name not in section:
            _unknown(dotted, [f"{key}.{k}" for k in section], source)
        default = section[name]
        if isinstance(default, dict) and default:
            if not isinstance(item, dict):
                raise UserError(f"{source} {dotted}: '{dotted}' is a section; expected a JSON object")
            values.update(_object_leaves(dotted, item, default, source))
        else:
            values[dotted] = typed_json_value(item, default, dotted, source)
    return values


def parse_set_values(pairs: list[str] | None, defaults: dict, source: str = "--set") -> dict[str, Any]:
    """{dotted key: typed value} of `KEY=VALUE` strings, checked against the keys of `defaults`.

    A section key with a JSON object gives one entry per leaf it sets (see the module docstring)."""
    known, sections = dotted_keys(defaults), section_keys(defaults)
    values = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{source} {pair}: expected KEY=VALUE, e.g. train.lr=1e-4")
        if key in sections:
            values.update(merged_section(key, text, sections[key], source))
        elif key in known:
            values[key] = typed_value(text, known[key], key, source)
        else:
            _unknown(key, list(known) + list(sections), source)
    return values
