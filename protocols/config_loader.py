"""One typed config loader for the agent and the hub: TOML sections -> dataclasses, env overrides, named errors.

A config is a dataclass whose fields are values or section dataclasses (one per TOML table). Each value is
coerced from its type hint: str, int, float, bool, Path (a leading ~ is the home folder), X | None, Literal[...], tuple[X, ...], list[X] and
dict[str, str]. One env rule for every key: `<PREFIX><SECTION>_<KEY>` (TANDEM_AGENT_FALLBACK_DEADLINE_MS), or
`<PREFIX><KEY>` for a key at the top (TANDEM_HUB_HTTP_PORT); the variable wins over the file. An empty variable
means "no value": None for an optional key, ignored otherwise. `none`/`null` also mean None for an optional key.
A variable with the prefix that names no key is logged with the closest key. Errors name `section.key` and,
when the value came from the environment, the variable.

This module lives in protocols/ (imports nothing of ours) because the agent and the hub both use it and
neither may import the other.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
import types
from pathlib import Path, PurePath
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from tandem.protocols.errors import ContractError

__all__ = [
    "ConfigValueError",
    "build",
    "coerce",
    "env_name",
    "nest",
    "override",
    "read_toml",
    "section_keys",
    "unknown_env",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NONE = ("", "none", "null")


class ConfigValueError(ContractError):
    """A config value or key is wrong; `key` is its dotted name (`fallback.deadline_ms`).

    Each package turns it into its own ConfigError at its load() (the loader knows no package)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _hints(cls: type) -> dict[str, Any]:
    """The init fields of a config dataclass with their resolved type hints."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def section_keys(cls: type) -> dict[str, tuple[str, ...]]:
    """{section: keys} in declaration order; keys at the top of `cls` come under ""."""
    out: dict[str, tuple[str, ...]] = {}
    top = tuple(name for name, hint in _hints(cls).items() if not _is_section(hint))
    if top:
        out[""] = top
    for name, hint in _hints(cls).items():
        if _is_section(hint):
            out[name] = tuple(_hints(hint))
    return out


def env_name(prefix: str, key: str) -> str:
    """The variable for a dotted key: env_name("TANDEM_AGENT_", "ota.watch_s") -> TANDEM_AGENT_OTA_WATCH_S."""
    return prefix + key.replace(".", "_").upper()


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed file; ConfigValueError (key "") says why it cannot be read."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigValueError("", f"{path}: cannot read the config ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigValueError("", f"{path}: not valid TOML ({exc})") from exc


def coerce(hint: Any, value: Any, *, from_env: bool = False) -> Any:
    """`value` as the type `hint` names; TypeError/ValueError (with what was expected) when it cannot be."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None or (from_env and isinstance(value, str) and value.strip().lower() in _NONE):
            if len(options) < len(args):
                return None
            raise ValueError("a value is required")
        if len(options) != 1:
            raise TypeError(f"unsupported config type {hint}")
        return coerce(options[0], value, from_env=from_env)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        item = args[0] if args else str
        if from_env and isinstance(value, str):
            sep = os.pathsep if isinstance(item, type) and issubclass(item, PurePath) else ","
            value = [part.strip() for part in value.split(sep) if part.strip()]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError("expected a list")
        return origin(coerce(item, v, from_env=from_env) for v in value)
    if origin is dict or hint is dict:
        return _table(value, from_env)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        if isinstance(value, str) and not from_env:
            raise ValueError("expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
    if hint is float:
        if isinstance(value, bool) or (isinstance(value, str) and not from_env):
            raise ValueError("expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if isinstance(hint, type) and issubclass(hint, PurePath):
        if not isinstance(value, (str, PurePath)):
            raise ValueError("expected a path")
        path = hint(value)
        return path.expanduser() if isinstance(path, Path) else path  # "~/.tandem/..." as a shell would read it
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    raise TypeError(f"unsupported config type {hint}")


def _table(value: Any, from_env: bool) -> dict[str, str]:
    """A TOML table of strings, or `k=v,k2=v2` from the environment."""
    if from_env and isinstance(value, str):
        items = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(kv) != 2 for kv in items):
            raise ValueError("expected a table of strings (k=v,k2=v2 in env)")
        return {k.strip(): v.strip() for k, v in items}
    if not isinstance(value, Mapping) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        raise ValueError("expected a table of strings (k=v,k2=v2 in env)")
    return {str(k): str(v) for k, v in value.items()}


def _value(key: str, hint: Any, value: Any, env_var: str | None) -> Any:
    try:
        return coerce(hint, value, from_env=env_var is not None)
    except (TypeError, ValueError) as exc:
        where = f" (from {env_var})" if env_var else ""
        raise ConfigValueError(f"{key}{where}", f"{exc}, got {value!r}") from None


def _unknown(key: str, known: list[str]) -> ConfigValueError:
    close = difflib.get_close_matches(key.rpartition(".")[2], known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigValueError(key, f"unknown key ({hint}known: {', '.join(known)})")


def nest(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as TOML reads them: {"model.dir": p} -> {"model": {"dir": p}}."""
    out: dict[str, Any] = {}
    for dotted, value in keys.items():
        section, _, key = dotted.rpartition(".")
        if section:
            out.setdefault(section, {})[key] = value
        else:
            out[key] = value
    return out


def build(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    prefix: str = "",
    base_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """An instance of `cls` from a TOML-shaped mapping, then `prefix` variables from `env`, then `overrides`
    (dotted keys, e.g. command-line flags) on top; constructed (and so validated) once, from the result.

    Unknown keys in `data` fail by name; relative paths resolve against `base_dir` (the file's folder)."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, raw in data.items():
        if name not in hints:
            raise _unknown(name, list(hints))
        hint = hints[name]
        if _is_section(hint):
            if not isinstance(raw, Mapping):
                raise ConfigValueError(name, f"expected a [{name}] table, got {raw!r}")
            values[name] = _section_values(name, hint, raw, base_dir)
        else:
            values[name] = _resolve(_value(name, hint, raw, None), base_dir)
    if env is not None and prefix:
        _apply_env(hints, values, env, prefix)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        if section:
            sub = _hints(hints[section]) if section in hints and _is_section(hints[section]) else {}
            if key not in sub:
                raise _unknown(dotted, list(sub) or list(hints))
            values.setdefault(section, {})[key] = _value(dotted, sub[key], value, None)
        elif key in hints and not _is_section(hints[key]):
            values[key] = _value(key, hints[key], value, None)
        else:
            raise _unknown(key, list(hints))
    kwargs: dict[str, Any] = {}
    for name, hint in hints.items():
        if _is_section(hint):
            if name in values:
                kwargs[name] = _construct(name, hint, values[name])
        elif name in values:
            kwargs[name] = values[name]
    return _construct("", cls, kwargs)


def _section_values(section: str, cls: type, raw: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            raise _unknown(f"{section}.{key}", list(hints))
        out[key] = _resolve(_value(f"{section}.{key}", hints[key], value, None), base_dir)
    return out


def _apply_env(hints: dict[str, Any], values: dict[str, Any], env: Mapping[str, str], prefix: str) -> None:
    for name, hint in hints.items():
        if _is_section(hint):
            for key, sub in _hints(hint).items():
                dotted = f"{name}.{key}"
                raw = env.get(env_name(prefix, dotted))
                if raw is not None and not _skip(sub, raw):
                    values.setdefault(name, {})[key] = _value(dotted, sub, raw, env_name(prefix, dotted))
        else:
            raw = env.get(env_name(prefix, name))
            if raw is not None and not _skip(hint, raw):
                values[name] = _value(name, hint, raw, env_name(prefix, name))


def _skip(hint: Any, raw: str) -> bool:
    """An empty variable on a key that cannot be None is no value at all."""
    return raw.strip() == "" and type(None) not in get_args(hint)


def _resolve(value: Any, base_dir: Path | None) -> Any:
    if base_dir is None:
        return value
    if isinstance(value, Path) and not value.is_absolute():
        return base_dir / value
    if isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
        return tuple(v if v.is_absolute() else base_dir / v for v in value)
    return value


def _construct(section: str, cls: type[T], kwargs: dict[str, Any]) -> T:
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        missing = [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.init
            and f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if not missing:
            raise
        name = f"{section}.{missing[0]}" if section else missing[0]
        raise ConfigValueError(name, "required") from exc


def override(config: T, changes: Mapping[str, Any]) -> T:
    """A copy of `config` with dotted keys changed (`{"model.dir": path}`), each value coerced to its hint."""
    hints = _hints(type(config))
    by_section: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        if not section:
            if key not in hints or _is_section(hints[key]):
                raise _unknown(key, list(hints))
            top[key] = _value(key, hints[key], value, None)
            continue
        if section not in hints or not _is_section(hints[section]):
            raise _unknown(section, list(hints))
        sub = _hints(hints[section])
        if key not in sub:
            raise _unknown(dotted, list(sub))
        by_section.setdefault(section, {})[key] = _value(dotted, sub[key], value, None)
    for section, keys in by_section.items():
        top[section] = dataclasses.replace(getattr(config, section), **keys)
    return dataclasses.replace(config, **top)  # type: ignore[type-var]


def unknown_env(cls: type, env: Mapping[str, str], prefix: str, also: tuple[str, ...] = ()) -> list[str]:
    """Warn (and return) each `prefix` variable that names no key of `cls` (nor one of `also`, variables other
    parts read), with the closest key."""
    known = [env_name(prefix, f"{s}.{k}" if s else k) for s, keys in section_keys(cls).items() for k in keys]
    stray = sorted(name for name in env if name.startswith(prefix) and name not in known and name not in also)
    for name in stray:
        close = difflib.get_close_matches(name, known, n=1)
        log.warning("%s names no config key; ignored%s", name, f" (did you mean {close[0]}?)" if close else "")
    return stray
