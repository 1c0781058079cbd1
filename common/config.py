"""Run configuration: TOML files, per-component dataclass defaults, dotted `--set` overrides.

A config is a dict of section name -> dataclass instance. Each component owns its dataclass, so
defaults live next to the code that uses them; an unknown section or key is an error that lists
the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.io import write_text_atomic

Config = dict[str, Any]


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a TOML value against a dataclass annotation; ints widen to floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            try:
                return _coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not of type {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise UserError(f"{where}: expected nothing, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_type, where) for v in value]
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_config(schema: dict[str, type], raw: dict[str, Any], source: str = "config") -> Config:
    """Fill each section's dataclass from raw TOML data, rejecting unknown sections and keys."""
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise UserError(
            f"{source}: unknown section(s) {', '.join(unknown)}; valid sections: "
            f"{', '.join(schema)}"
        )
    config: Config = {}
    for section, cls in schema.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise UserError(f"{source}: [{section}] must be a table of keys")
        types_ = _field_types(cls)
        bad = sorted(set(values) - set(types_))
        if bad:
            raise UserError(
                f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in bad)}; valid keys "
                f"in [{section}]: {', '.join(types_)}"
            )
        kwargs = {k: _coerce(v, types_[k], f"{source}: {section}.{k}") for k, v in values.items()}
        config[section] = cls(**kwargs)
    return config


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`; the value is read as TOML, falling back to a bare string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, value_text = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {text!r}: the key must look like section.key (e.g. optim.lr)")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return parts[0], parts[1], value


def load_config(
    schema: dict[str, type], path: str | Path | None = None, overrides: list[str] = ()
) -> Config:
    """Read a TOML file (or start from defaults) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found; pass an existing --config") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML ({exc}); fix the file") from None
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return build_config(schema, raw, source)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return {name: dataclasses.asdict(section) for name, section in config.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def dumps_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a two-level config dict as TOML (None values are left out)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def save_config(config: Config, path: str | Path) -> None:
    write_text_atomic(path, dumps_toml(config_to_dict(config)))
