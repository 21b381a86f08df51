"""Type checks of config values against the field types of the (merged) JobConfig dataclasses.

torchtitan's ConfigManager hands TOML values to the dataclasses as they are and passes them to tyro as
defaults, which only warns about a wrong type: `use_hadamard = "false"` stays the (truthy) string
"false", `filter_fqns = "output"` a string iterated letter by letter. CLI values are parsed by tyro, TOML
values are not; so every value is checked here, in the TOML file before torchtitan reads it
(check_toml_values) and in the parsed config before anything is built (check_config_types).
"""

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin

from adahop.config import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package (torchtitan does the same)
    import tomli as tomllib

_NOUNS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(tp) -> str:
    """What a value of annotation `tp` looks like, in TOML terms."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        arms = [describe(a) for a in args if a is not type(None)]
        return " or ".join(arms) + (" (or left unset)" if type(None) in args else "")
    if origin is list:
        item = args[0] if args else Any
        return "a list of " + (_NOUNS.get(item) or f"items each {describe(item)}")
    if origin is dict:
        k, v = args if args else (Any, Any)
        return f"a table of {_NOUNS.get(k, describe(k))} -> {_NOUNS.get(v, describe(v))}"
    return {
        bool: "true or false (a TOML boolean, without quotes)",
        int: "an integer",
        float: "a number",
        str: "a string (in quotes)",
        type(None): "left unset",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def matches(value, tp) -> bool:
    """Whether `value` is a value of annotation `tp` (a bool is no int; an int is a float)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is list:
        item = args[0] if args else Any
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        k, v = args if args else (Any, Any)
        return all(matches(key, k) and matches(item, v) for key, item in value.items())
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    if isinstance(origin, type):
        return isinstance(value, origin)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation that names no checkable type (e.g. a TypeVar)


def _hint(key: str, value, tp) -> str:
    """How to write the value instead, where a common slip explains it (quotes, a bare string)."""
    if isinstance(value, str):
        try:
            unquoted = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            unquoted = None
        if unquoted is not None and matches(unquoted, tp):
            return f"write {value} without quotes"
        if matches([value], tp):
            name = key.rsplit(".", 1)[-1]
            return f'write a list: {name} = ["{value}"] in the TOML (on the command line: --{key} a,b)'
    return ""


def check_value(key: str, value, tp, where: str = "") -> None:
    """Raise ConfigError naming `key`, `value` and the expected type unless `value` matches `tp`."""
    if not matches(value, tp):
        hint = " ".join(filter(None, [_hint(key, value, tp), where]))
        raise ConfigError(key, value, describe(tp), hint)


def check_config_types(config, prefix: str = "") -> None:
    """Check every field of the dataclass tree `config` (a parsed JobConfig) against its type."""
    for f in dataclasses.fields(config):
        key, value = prefix + f.name, getattr(config, f.name)
        if dataclasses.is_dataclass(f.type):
            if not dataclasses.is_dataclass(value):
                raise ConfigError(key, value, f"a table [{key}]")
            check_config_types(value, key + ".")
        else:
            check_value(key, value, f.type)


def check_toml_values(values: dict, config_cls, prefix: str = "", where: str = "") -> None:
    """Check the TOML tables `values` against the dataclass `config_cls`: every key known, every
    section a table, every value of its field's type."""
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    for name, value in values.items():
        key = prefix + name
        f = known.get(name)
        if f is None:
            section = f"[{prefix[:-1]}]" if prefix else "the top level (sections)"
            raise ConfigError(key, value, f"the keys of {section}: " + ", ".join(known), f"unknown key {where}")
        if dataclasses.is_dataclass(f.type):
            if not isinstance(value, dict):
                raise ConfigError(
                    key,
                    value,
                    f"a table [{key}] of keys " + ", ".join(g.name for g in dataclasses.fields(f.type)),
                    where,
                )
            check_toml_values(value, f.type, key + ".", where)
        else:
            check_value(key, value, f.type, where)
