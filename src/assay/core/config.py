"""Typed configs: dataclasses with one help string per field, YAML files and dotted overrides.

A stage's config is a dataclass whose fields carry ``metadata={"help": ...}``; the CLI derives
its flags from those fields, a YAML file can set any of them, and ``key.sub=value`` overrides
win over both. The resolved config is saved beside every output so a number can be traced back
to exactly what made it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

import yaml

from assay.core.io import InputError
from assay.core.redact import redact_config
from assay.core.registry import did_you_mean

C = TypeVar("C")


class ConfigError(InputError):
    """A bad config value, with the dotted key it belongs to (``train.method``).

    The message names the key as the code saw it (``config.train.method: ...``); ``locate`` turns
    it into what the user typed: the flag, the override, or the line of the YAML file.
    """

    def __init__(self, where: str, key: str, detail: str, kind: str = "value", message: str = ""):
        super().__init__(message or f"{where}: {detail}")
        self.where, self.key, self.detail, self.kind = where, key, detail, kind

    def __reduce__(self):
        # Raised in a Ray worker, it must arrive at the driver as itself (pickled by its fields).
        return (type(self), (self.where, self.key, self.detail, self.kind, str(self)))


def opt(default: Any = MISSING, help: str = "", **kw: Any) -> Any:
    """A config field with its documentation."""
    if isinstance(default, (list, dict)):
        val = default
        return field(default_factory=lambda: copy.deepcopy(val), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def parse_bool(value: Any, where: str, key: str) -> bool:
    """A config boolean: true/false, or one of the usual spellings of them in a string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ConfigError(where, key, f"expected true/false, got {value!r}")


def _coerce(value: Any, annotation: Any, where: str, key: str = "") -> Any:
    def bad(detail: str) -> ConfigError:
        return ConfigError(where, key, detail)

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, key) if len(inner) == 1 else value
    if is_dataclass(annotation):
        if not isinstance(value, dict):
            raise bad(f"expected a mapping, got {value!r}")
        return from_mapping(annotation, value, where, _key=key)
    if annotation is bool:
        return parse_bool(value, where, key)
    if annotation is int:
        if isinstance(value, bool):
            raise bad(f"expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise bad(f"expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad(f"expected a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    if origin is list or annotation is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise bad(f"expected a list, got {value!r}")
        return [_coerce(v, args[0], where, key) for v in value] if args else value
    return value


def _nested_default(f: dataclasses.Field) -> Any:
    """The default instance of a nested config field (a pipeline may set other defaults than the class)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default if f.default is not MISSING else None


def from_mapping(cls: Type[C], data: dict, where: str = "config", base: Any = None, _key: str = "") -> C:
    """Build a (possibly nested) config dataclass, rejecting unknown keys with a suggestion.

    Keys not in ``data`` keep their value in ``base`` (or the field default). A nested config
    section is merged into that field's own default, so ``train.batch_size=4`` changes the batch
    size and keeps every other setting the pipeline chose for ``train``.
    """
    legacy = getattr(cls, "LEGACY", None)
    if legacy is not None:
        # Old names of renamed fields keep working: the config maps them to the new ones first.
        data = legacy(dict(data), where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]

    def dotted(name: str) -> str:
        return f"{_key}.{name}" if _key else name

    for k in data:
        if k not in names:
            raise ConfigError(where, dotted(k), f"unknown key '{k}'{did_you_mean(k, names)}", kind="unknown")
    kwargs = {}
    for f in fields(cls):
        if not f.init:
            if f.name in data:
                raise ConfigError(where, dotted(f.name), f"'{f.name}' is derived, not set")
            continue
        if f.name not in data:
            if base is not None:
                kwargs[f.name] = copy.deepcopy(getattr(base, f.name))
            elif f.default is MISSING and f.default_factory is MISSING:
                # Checked here rather than left to the dataclass's TypeError, which names no flag.
                need = f"is required ({f.metadata.get('help', '')})"
                raise ConfigError(where, dotted(f.name), need, kind="missing", message=f"{where}: '{f.name}' {need}")
            continue
        value, hint = data[f.name], hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(value, dict) and typing.get_origin(hint) in (typing.Union, types.UnionType) and \
                len(inner) == 1 and is_dataclass(inner[0]):
            hint = inner[0]  # Optional[Section]: a mapping fills the section (None stays None below)
        if is_dataclass(hint) and isinstance(value, dict):
            sub = getattr(base, f.name) if base is not None else _nested_default(f)
            kwargs[f.name] = from_mapping(hint, value, f"{where}.{f.name}", base=sub if is_dataclass(sub) else None,
                                          _key=dotted(f.name))
        else:
            kwargs[f.name] = _coerce(value, hint, f"{where}.{f.name}", dotted(f.name))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None


def to_mapping(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """Turn ``["train.lr=1e-4", "k=8"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"override '{item}': expected key=value")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError as exc:
            raise InputError(f"override '{item}': the value is not valid YAML ({_yaml_problem(exc)}); "
                             "quote it to pass a plain string") from None
        set_dotted(out, k.strip(), value)
    return out


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at column {mark.column + 1}" if mark else problem


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{line}: invalid UTF-8 at byte {exc.start}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}:1: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def key_line(path: str | Path, key: str) -> Optional[int]:
    """The line of dotted ``key`` in a YAML mapping file, or None if the file does not set it."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        if hit is None:
            return None
        line, node = hit[0].start_mark.line + 1, hit[1]
    return line


def locate(exc: ConfigError, config_file: Optional[str] = None, overrides: Sequence[str] = (),
           flags: Sequence[str] = (), command: str = "") -> str:
    """Say where a bad value came from, in the user's terms: the override, the --flag, or file:line.

    Checked in the order the sources win (overrides > flags > file), so the named source is the
    one whose value was used. ``flags`` are the top-level field names given as flags.
    """
    key, detail = exc.key, exc.detail
    for item in reversed(overrides):
        k = item.split("=", 1)[0].strip()
        if "=" not in item:
            continue
        if key == k or k.startswith(key + "."):  # the override set this value, or a part of it
            return f"override '{item}': {detail}"
        if key.startswith(k + "."):  # the override set a whole section holding it
            return f"override '{item}': {key}: {detail}"
    top = key.split(".")[0]
    if top in flags:
        flag = "--" + top.replace("_", "-")
        return f"{flag}: {detail}" if key == top else f"{flag}: {key}: {detail}"
    if config_file:
        line = key_line(config_file, key)
        if line is not None:
            return f"{config_file}:{line}: {key}: {detail}"
    if exc.kind == "missing" and "." not in key:
        prefix = f"{command}: " if command else ""
        return f"{prefix}--{key.replace('_', '-')} {detail}"
    return f"{command}: {key}: {detail}" if command else f"{key}: {detail}"


def save_yaml(path: str | Path, cfg: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saved configs get shared: credentials in URLs and key fields are masked (assay.core.redact).
    data = redact_config(to_mapping(cfg) if is_dataclass(cfg) else cfg)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per top-level scalar field of a config dataclass, plus --config and overrides."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        help_ = f.metadata.get("help", "")
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"{help_} (default: {default!r})")
    # A config may keep flags for fields that moved into a section (``FLAGS = {"n": "less.n"}``),
    # so an older command line still runs.
    for name, dotted in getattr(cls, "FLAGS", {}).items():
        parser.add_argument("--" + name.replace("_", "-"), dest="_flag_" + name, default=None,
                            metavar=name.upper(), help=f"same as the override {dotted}=VALUE")
    parser.add_argument("--config", dest="_config", default=None, help="a YAML file of these settings")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, applied last (e.g. temperature=0.7)")


def config_from_args(cls: Type[C], args: argparse.Namespace) -> C:
    """Resolve a config: defaults < --config YAML < --flags < KEY=VALUE overrides."""
    data: dict = load_yaml(args._config) if getattr(args, "_config", None) else {}
    for f in fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            data[f.name] = v  # a string; _coerce converts it to the field's type
    for name, dotted in getattr(cls, "FLAGS", {}).items():
        if getattr(args, "_flag_" + name, None) is not None:
            set_dotted(data, dotted, getattr(args, "_flag_" + name))
    items = list(getattr(args, "overrides", []) or [])
    positional = getattr(cls, "POSITIONAL", None)
    if positional:
        # A config may name one field that can be given bare: `assay report RUN_DIR`.
        plain = [i for i in items if "=" not in i]
        if len(plain) > 1:
            raise InputError(f"expected one {positional.upper()}, got {' '.join(plain)}")
        if plain:
            data[positional] = plain[0]
            items.remove(plain[0])
    if getattr(cls, "PASSTHROUGH", False):
        # The overrides belong to another config (a recipe's pipeline); it parses them itself.
        data["overrides"] = items
        return from_mapping(cls, data)
    data = deep_merge(data, parse_overrides(items))
    return from_mapping(cls, data)


def parse_option_string(text: str, key: str = "backend_options") -> dict:
    """``"n_params=7e9,concurrency=4"`` (the --backend-options flag) -> a mapping; values read as YAML scalars."""
    out: dict = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError(key, key, f"expected key=value[,key=value...], got {item!r}")
        try:
            out[name.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"{key}.{name.strip()}", f"{key}.{name.strip()}", "the value is not valid YAML; quote it to pass a plain string") from None
    return out
