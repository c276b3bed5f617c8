"""JSON configs with `//` comments, validated against defaults, overridden by flags, saved with runs.

A config is plain nested dicts. Every stage keeps its defaults as a dict; a user file is merged on
top of it, and a key that is in neither the defaults nor the stage's list of known-but-unused keys
(the reference configs carry some: `gpu_ids`, `wandb`, ...) is an error naming the key and the
nearest valid one.

A saved config carries a top-level `software` section (the package version and git commit that ran,
`ubf.core.version.provenance`); loading such a file as a config drops that section, and the new run
records its own.
"""
import copy
import difflib
import json
import os
from typing import Any, Iterable

from ubf.core.errors import UserError
from ubf.core.fs import atomic_output
from ubf.core.logs import get_logger
from ubf.core.version import provenance

PROVENANCE_KEY = "software"  # written by save_config, not a setting


def strip_json_comments(text: str) -> str:
    """Remove `// ...` and `/* ... */` comments that are outside JSON strings."""
    out, i, n = [], 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            # keep line numbers of later errors right
            block = text[i:(n if end < 0 else end + 2)]
            out.append("\n" * block.count("\n"))
            i = n if end < 0 else end + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def read_json_config(path: str) -> dict:
    """Read a JSON config that may contain comments; errors name the file and the line."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        line = text_line_of(path, err.start)
        raise UserError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at line {line}); "
                        "save the config as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the config ({err.strerror or err})") from None
    try:
        data = json.loads(strip_json_comments(text))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a JSON object")
    return data


def text_line_of(path: str, offset: int) -> int:
    """1-based line number of byte `offset` of a file (for errors about undecodable bytes)."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a nested dict, sections included."""
    keys = []
    for key, value in tree.items():
        keys.append(prefix + str(key))
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{prefix}{key}.")
    return keys


def nearest_key(dotted: str, key: str, base: dict, prefix: str, root: dict) -> str | None:
    """The valid key a typo most likely meant: a sibling first, else the same name elsewhere in the tree."""
    close = difflib.get_close_matches(key, [str(k) for k in base], n=1)
    if close:
        return prefix + close[0]
    everywhere = leaf_keys(root)
    by_last = {}
    for candidate in everywhere:
        by_last.setdefault(candidate.rsplit(".", 1)[-1], candidate)
    close = difflib.get_close_matches(key, list(by_last), n=1, cutoff=0.75)
    return by_last[close[0]] if close else None


def _matches(dotted: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if dotted == pattern or dotted.startswith(pattern + "."):
            return True
        if pattern.endswith(".*") and dotted.startswith(pattern[:-1]):
            return True
    return False


def merge_config(defaults: dict, user: dict, source: str = "config",
                 known_unused: Iterable[str] = (), free_form: Iterable[str] = ()) -> dict:
    """Return `defaults` updated by `user`, refusing keys nobody knows.

    `known_unused`: dotted keys accepted and ignored with a log note. `free_form`: dotted keys whose
    dict value is taken as it is (no key checking below them).
    """
    known_unused, free_form = list(known_unused), list(free_form)
    if PROVENANCE_KEY in user and PROVENANCE_KEY not in defaults:  # a run's saved config.json used as -c
        user = {key: value for key, value in user.items() if key != PROVENANCE_KEY}
    result = copy.deepcopy(defaults)
    ignored: list[str] = []

    def walk(base: dict, update: dict, prefix: str) -> None:
        for key, value in update.items():
            dotted = f"{prefix}{key}"
            if key not in base:
                if _matches(dotted, known_unused):
                    ignored.append(dotted)
                    base[key] = copy.deepcopy(value)
                    continue
                close = nearest_key(dotted, str(key), base, prefix, defaults)
                hint = f" (did you mean '{close}'?)" if close else ""
                raise UserError(f"{source}: unknown key '{dotted}'{hint}")
            if isinstance(base[key], dict) and not _matches(dotted, free_form):
                if not isinstance(value, dict):
                    raise UserError(f"{source}: key '{dotted}' must be an object, got {type(value).__name__}")
                walk(base[key], value, dotted + ".")
            else:
                base[key] = copy.deepcopy(value)

    walk(result, user, "")
    if ignored:
        get_logger().info("%s: keys kept but not used by this implementation: %s", source, ", ".join(ignored))
    return result


def get_by_path(cfg: dict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_by_path(cfg: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def apply_overrides(cfg: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys from command-line flags; `None` means the flag was not given."""
    for dotted, value in overrides.items():
        if value is not None:
            set_by_path(cfg, dotted, value)
    return cfg


def load_config(path: str | None, defaults: dict, overrides: dict[str, Any] | None = None,
                known_unused: Iterable[str] = (), free_form: Iterable[str] = ()) -> dict:
    """Defaults, then the file (if any), then the flags: the resolved config of a run."""
    user = read_json_config(path) if path else {}
    cfg = merge_config(defaults, user, source=path or "defaults", known_unused=known_unused, free_form=free_form)
    return apply_overrides(cfg, overrides or {})


def save_config(cfg: dict, path: str) -> None:
    """Write the resolved config beside a run's outputs (atomically), with the `software` that ran it."""
    record = {**cfg, PROVENANCE_KEY: provenance()}
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
