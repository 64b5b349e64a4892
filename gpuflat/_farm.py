"""Farm configuration files: ``gpuflat run --config farm.toml``.

The file holds any option of ``gpuflat run`` at its top level, named like the long flag
(``sigma-low``) or with underscores (``sigma_low``); ``inputs`` is the list of INPUT
arguments. Flags given on the command line override the file: only those the user actually
typed, found by parsing the command line again with every default suppressed. Paths in the
file (``inputs``, ``outdir``, ``report``, ``mask``) are relative to the file's directory.

Everything here is validation at the boundary: an unknown key, a value of the wrong type or
an unreadable file is a one-line :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys
from pathlib import Path

#: options that may not appear in the file, with the reason
_NOT_IN_FILE = {
    "config": "a config file cannot name another one",
    "help": "not an option",
}
#: path-valued options, resolved against the config file's directory
_PATHS = ("outdir", "report", "mask")
#: options that choose where the work runs; giving one on the command line drops the
#: file's other (a farm.toml with ``workers = 8`` still runs with ``--scheduler ADDR``)
_EXCLUSIVE = ("workers", "scheduler")


class ConfigError(Exception):
    """A problem with a configuration file (reported as a usage error)."""


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc.reason})") from None


def _run_subparser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise RuntimeError("the parser has no 'run' command")  # pragma: no cover


def _options(run: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action for every option a config file may set."""
    return {a.dest: a for a in run._actions if a.dest not in _NOT_IN_FILE}


def explicit_dests(build_parser, argv) -> set[str]:
    """The ``run`` options the user actually gave on the command line."""
    parser = build_parser()
    for action in _run_subparser(parser)._actions:
        action.default = argparse.SUPPRESS
    given = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return {k for k, v in vars(given).items() if v is not argparse.SUPPRESS} - {"command"}


def apply_config(args: argparse.Namespace, argv, build_parser) -> argparse.Namespace:
    """Merge ``args.config`` into ``args``: the file's values, then the flags given."""
    path = Path(args.config)
    data = _load_toml(path)
    options = _options(_run_subparser(build_parser()))
    values = {}
    seen_as = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest in _NOT_IN_FILE:
            raise ConfigError(f"{path}: '{key}' cannot be set in the file ({_NOT_IN_FILE[dest]})")
        if dest not in options:
            raise ConfigError(f"{path}: unknown key '{key}'{_suggest(key, options)}")
        if dest in seen_as:
            raise ConfigError(f"{path}: '{key}' and '{seen_as[dest]}' are the same option")
        seen_as[dest] = key
        values[dest] = _convert(path, key, value, options[dest])
    base = path.parent
    for dest in _PATHS:
        if values.get(dest) is not None:
            values[dest] = _resolve(values[dest], base)
    if "inputs" in values:
        values["inputs"] = [_resolve_input(v, base) for v in values["inputs"]]
    explicit = explicit_dests(build_parser, argv)
    if explicit & set(_EXCLUSIVE):
        for dest in _EXCLUSIVE:
            values.pop(dest, None)
    merged = argparse.Namespace(**vars(args))
    for dest, value in values.items():
        if dest not in explicit:
            setattr(merged, dest, value)
    return merged


def _suggest(key: str, options) -> str:
    hyphens = "-" in key
    names = {d.replace("_", "-") if hyphens else d: d for d in options}
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return " (see 'gpuflat run --help' for the options)"


_KIND = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}


def _kind(value) -> str:
    if isinstance(value, dict):
        return "table"
    return _KIND.get(type(value), type(value).__name__)


def _convert(path, key, value, action: argparse.Action):
    """The value as the command line would have given it, or a one-line ConfigError."""

    def wrong(expected):
        return ConfigError(f"{path}: {key}: expected {expected}, got {_kind(value)} {value!r}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("an integer >= 0")
        return value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise wrong("a string or an array of strings")
        return [_typed(path, key, v, action, wrong) for v in items]
    if isinstance(action.nargs, int):
        if not isinstance(value, list) or len(value) != action.nargs:
            raise wrong(f"an array of {action.nargs} values")
        return [_typed(path, key, v, action, wrong) for v in value]
    if action.dest == "group_by" and isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise wrong("a string or an array of header keys")
        value = ",".join(value)
    return _typed(path, key, value, action, wrong)


def _typed(path, key, value, action, wrong):
    convert = action.type
    if convert is None:
        if not isinstance(value, str):
            raise wrong("a string")
    else:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise wrong(_expected(convert))
        try:  # numbers too go through the command line's converter, as text
            value = convert(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise wrong(_expected(convert)) from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(repr(c) for c in action.choices)
        raise ConfigError(f"{path}: {key}: must be one of {choices}; got {value!r}")
    return value


_EXPECTED = {
    "float": "a number",
    "int": "an integer",
    "_maxiters": "an integer or 'none'",
    "_float_or_none": "a number or 'none'",
    "_positive_int": "an integer >= 1",
}


def _expected(convert) -> str:
    return _EXPECTED.get(getattr(convert, "__name__", ""), "a valid value")


def _resolve(value: str, base: Path) -> str:
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base, value)


def _resolve_input(value: str, base: Path) -> str:
    if value.startswith("@"):
        return "@" + _resolve(value[1:], base)
    return _resolve(value, base)


def product_header_function(args):
    """``_io.product_header``, plus the config file's path in the provenance when there
    is one (``HIERARCH GPUFLAT CONFIG``). Picklable, for Dask workers."""
    from ._io import product_header

    config = getattr(args, "config", None)
    if not config:
        return product_header
    return functools.partial(_header_with_config, os.path.abspath(config))


def _header_with_config(config_path, *args, **kwargs):
    from ._io import product_header

    header = product_header(*args, **kwargs)
    header["HIERARCH GPUFLAT CONFIG"] = config_path
    return header


def effective_configuration(args: argparse.Namespace) -> dict:
    """Every option of the run as it was applied (file, then flags), for the report."""
    return {k: v for k, v in sorted(vars(args).items()) if k != "command"}
