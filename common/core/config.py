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

from common.core.errors import UserError
from common.core.io import read_text, write_text_atomic

Config = dict[str, Any]


def option(default: Any = dataclasses.MISSING, *, factory=None, min=None, max=None,
           below=None, above=None, choices=None) -> Any:
    """A dataclass field with the range (min <= value <= max, above < value < below; every
    element of a list) or the choices its value must respect, checked whenever a config is
    built."""
    rules = {k: v for k, v in (("min", min), ("max", max), ("below", below), ("above", above),
                               ("choices", choices)) if v is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"rules": rules})
    return dataclasses.field(default=default, metadata={"rules": rules})


def rules_of(cls: type, name: str) -> dict[str, Any]:
    """The rules `option` declared on field `name` of config dataclass `cls` (a command-line
    option that sets that field checks the same ones)."""
    return next(f.metadata.get("rules", {}) for f in dataclasses.fields(cls) if f.name == name)


def check_value(value: Any, rules: dict[str, Any], where: str) -> None:
    if "choices" in rules:
        choices = rules["choices"]
        if str(value).lower() not in {str(c).lower() for c in choices}:
            raise UserError(f"{where}: {value!r} is not a choice; use one of "
                            f"{', '.join(str(c) if c != '' else repr(c) for c in choices)}")
    for item in value if isinstance(value, list) else [value]:
        if "min" in rules and item < rules["min"]:
            raise UserError(f"{where}: {item!r} must be at least {rules['min']}")
        if "max" in rules and item > rules["max"]:
            raise UserError(f"{where}: {item!r} must be at most {rules['max']}")
        if "below" in rules and not item < rules["below"]:
            raise UserError(f"{where}: {item!r} must be less than {rules['below']}")
        if "above" in rules and not item > rules["above"]:
            raise UserError(f"{where}: {item!r} must be greater than {rules['above']}")


def field_types(cls: type) -> dict[str, Any]:
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
        if value != value:  # TOML's nan: no setting means "not a number"
            raise UserError(f"{where}: nan is not a number; give a value")
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


def build_config(schema: dict[str, type], raw: dict[str, Any], source: str = "config",
                 origins: dict[str, str] | None = None) -> Config:
    """Fill each section's dataclass from raw TOML data, rejecting unknown sections and keys
    and values outside their option's range or choices. `origins` names where a key's value
    came from when not from `source` ("section.key" -> "--set section.key=value")."""
    origins = origins or {}

    def where(section: str, key: str) -> str:
        return origins.get(f"{section}.{key}", f"{source}: {section}.{key}")

    unknown = sorted(set(raw) - set(schema))
    if unknown:
        blamed = next((o for k, o in origins.items() if k.split(".")[0] in unknown), source)
        raise UserError(
            f"{blamed}: unknown section(s) {', '.join(unknown)}; valid sections: "
            f"{', '.join(schema)}"
        )
    config: Config = {}
    for section, cls in schema.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise UserError(f"{source}: [{section}] must be a table of keys")
        types_ = field_types(cls)
        bad = sorted(set(values) - set(types_))
        if bad:
            raise UserError(
                f"{origins.get(f'{section}.{bad[0]}', source)}: unknown key(s) "
                f"{', '.join(f'{section}.{k}' for k in bad)}; valid keys "
                f"in [{section}]: {', '.join(types_)}"
            )
        kwargs = {k: _coerce(v, types_[k], where(section, k)) for k, v in values.items()}
        config[section] = cls(**kwargs)
        spelled = {}   # a choice as declared, however the file cased it (Adam -> adam)
        for f in dataclasses.fields(cls):
            rules = f.metadata.get("rules")
            if rules:
                value = getattr(config[section], f.name)
                check_value(value, rules, where(section, f.name))
                if "choices" in rules and isinstance(value, str):
                    spelled[f.name] = next(c for c in rules["choices"]
                                           if str(c).lower() == value.lower())
        if spelled:
            config[section] = dataclasses.replace(config[section], **spelled)
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
            raw = tomllib.loads(read_text(path, "save the config as UTF-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found; pass an existing --config") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML ({exc}); fix the file") from None
    origins = {}
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
        origins[f"{section}.{key}"] = f"--set {text}"
    return build_config(schema, raw, source, origins)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return {name: dataclasses.asdict(section) for name, section in config.items()}


def toml_value(value: Any) -> str:
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
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, keys quoted ("optim.lr" has a dot)
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def dumps_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a two-level config dict as TOML (None values are left out)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def save_config(config: Config, path: str | Path) -> None:
    write_text_atomic(path, dumps_toml(config_to_dict(config)))
