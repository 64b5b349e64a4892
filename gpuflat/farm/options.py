"""The options of a batch run (``gpuflat run``): one frozen :class:`RunOptions`, built from
flags and/or a TOML file and validated once.

A farm file (``gpuflat run --config farm.toml``) holds any option at its top level, named
like the long flag (``sigma-low``) or like the field (``sigma_low``); ``inputs`` is the list
of INPUT arguments. Flags given on the command line override the file. Paths in the file
(``inputs``, ``outdir``, ``report``, ``mask``) are relative to the file's directory. An
unknown key, a value of the wrong type or an unreadable file is a one-line
:class:`OptionError` naming the file and the key; so is every invalid option value.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from .._calibrate import Calibration
from .._config import CLIPS, CombineConfig
from .._extensions import parse_ext_list
from .._qa import QAConfig
from .._sources import Masking


class OptionError(Exception):
    """An invalid option or configuration file (a usage error: exit code 2)."""


# ---- text converters, shared by the command line and the TOML reader -------------------------


def float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "") else float(text)


_BYTE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
               "kib": 2**10, "mib": 2**20, "gib": 2**30}  # fmt: skip


def byte_size(text: str) -> float:
    """A size in bytes: a number (350e6) or a number and a unit (350MB, 1.5 GiB, 512M)."""
    t = text.strip().lower()
    number = t.rstrip("kmgib ")
    unit = t[len(number) :].strip()
    if unit not in _BYTE_UNITS or not number:
        raise ValueError(f"expected a size in bytes such as 350e6, 350MB or 2GiB, got {text!r}")
    return float(number) * _BYTE_UNITS[unit]  # its range: validated with the options


def byte_size_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "") else byte_size(text)


def maxiters(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "converge") else int(text)


def overscan_axis(text: str) -> int | None:
    if text.lower() in ("auto", "none"):
        return None
    if text not in ("0", "1"):
        raise ValueError(f"expected 0, 1 or auto, got {text!r}")
    return int(text)


def number_or_keyword(text: str) -> str:
    """A gain: a number (e-/ADU) or a header keyword, as text (the calibration parses it)."""
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {value}")
    return value


# kind of every option: a converter applied to text (numbers in a TOML file go through it as
# text too), a tuple of choices, or one of the words below
_KINDS = {
    "inputs": "strings", "recursive": "bool", "imagetyp": "strings", "where": "strings",
    "imagetyp_key": "str", "filter_key": "str", "allow_missing_key": "bool",
    "min_frames": positive_int, "group_by": "keys", "ext": "str", "outdir": "str",
    "overwrite": "bool", "compress": "bool",
    "skip_bad": "bool", "plots": "bool", "report": "str", "method": ("average", "median", "sum"),
    "scale": "str", "clip": CLIPS, "sigma_low": float, "sigma_high": float,
    "center": ("median", "mean"), "dev": ("mad_std", "std"), "maxiters": maxiters,
    "min_value": float_or_none, "max_value": float_or_none, "nlow": int, "nhigh": int,
    "mask": "str", "mem_limit": byte_size, "device_mem_limit": byte_size_or_none,
    "device": ("auto", "cpu", "cuda"),
    "scale_per": ("extension", "exposure"), "level_range": "pair", "qa_reject_factor": float,
    "no_qa": "bool", "workers": positive_int, "threads_per_worker": positive_int,
    "scheduler": "str", "verbose": "count", "quiet": "bool", "overscan": "str",
    "overscan_axis": overscan_axis, "overscan_model": "str", "trim": "str", "bias": "str",
    "dark": "str", "exposure_key": "str", "gain": number_or_keyword,
    "rdnoise": number_or_keyword, "noise_gain": number_or_keyword, "snoise": number_or_keyword,
    "nkeep": int, "grow": float, "mask_sources": "bool", "source_sigma": float,
    "source_grow": float,
    "source_iters": positive_int, "source_npixels": positive_int, "saturation": "str",
    "max_saturated": float, "pclip": float,
}  # fmt: skip
_EXPECTED = {
    float: "a number",
    int: "an integer",
    maxiters: "an integer or 'none'",
    float_or_none: "a number or 'none'",
    byte_size: "a size in bytes (350e6, 350MB, 2GiB)",
    byte_size_or_none: "a size in bytes (350e6, 350MB, 2GiB) or 'none'",
    positive_int: "an integer >= 1",
    overscan_axis: "0, 1 or 'auto'",
    number_or_keyword: "a number or a header keyword",
}


@dataclass(frozen=True)
class RunOptions:
    """Every option of a batch run, validated once (see ``gpuflat run --help``)."""

    inputs: tuple[str, ...] = ()
    recursive: bool = False
    imagetyp: tuple[str, ...] = ()
    where: tuple[str, ...] = ()
    imagetyp_key: str = "IMAGETYP"
    filter_key: str = "FILTER"
    group_by: str | None = None  # None: filter_key
    allow_missing_key: bool = False
    min_frames: int = 3
    ext: str | None = None
    outdir: str = "."
    config: str | None = None
    overwrite: bool = False
    compress: bool = False
    skip_bad: bool = False
    plots: bool = False
    report: str | None = None
    method: str = "average"
    scale: str = "median"
    clip: str = "sigma"
    sigma_low: float = 5.0
    sigma_high: float = 5.0
    center: str = "median"
    dev: str = "mad_std"
    maxiters: int | None = 1
    min_value: float | None = None
    max_value: float | None = None
    nlow: int = 0
    nhigh: int = 0
    rdnoise: str = "0"
    noise_gain: str = "1"
    snoise: str = "0"
    nkeep: int = 0
    pclip: float | None = None
    grow: float = 0.0
    mask: str | None = None
    mem_limit: float = 350e6
    device_mem_limit: float | None = None
    device: str = "auto"
    scale_per: str = "extension"
    level_range: tuple[float, float] | None = None
    qa_reject_factor: float = 10.0
    no_qa: bool = False
    workers: int | None = None
    threads_per_worker: int = 1
    scheduler: str | None = None
    verbose: int = 0
    quiet: bool = False
    overscan: str | None = None
    overscan_axis: int | None = 1
    overscan_model: str = "median"
    trim: str | None = None
    bias: str | None = None
    dark: str | None = None
    exposure_key: str = "EXPTIME"
    gain: str | None = None
    mask_sources: bool = False
    source_sigma: float = 3.0
    source_grow: float = 1.5
    source_iters: int = 1
    source_npixels: int = 2
    saturation: str | None = None
    max_saturated: float = 0.01
    # derived, validated values
    combine: CombineConfig = field(init=False, repr=False, compare=False)
    calibration: Calibration = field(init=False, repr=False, compare=False)
    qa: QAConfig = field(init=False, repr=False, compare=False)
    masking: Masking = field(init=False, repr=False, compare=False)
    where_pairs: tuple = field(init=False, repr=False, compare=False)
    group_keys: tuple = field(init=False, repr=False, compare=False)
    ext_specs: tuple | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("inputs", "imagetyp", "where"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.level_range is not None:
            object.__setattr__(self, "level_range", tuple(self.level_range))
        try:
            combine = CombineConfig(
                method=self.method, scale=self.scale, clip=self.clip, sigma_low=self.sigma_low,
                sigma_high=self.sigma_high, center=self.center, dev=self.dev,
                maxiters=self.maxiters, min_value=self.min_value, max_value=self.max_value,
                nlow=self.nlow, nhigh=self.nhigh, rdnoise=self.rdnoise,
                noise_gain=self.noise_gain, snoise=self.snoise, nkeep=self.nkeep,
                pclip=self.pclip, grow=self.grow, mem_limit=self.mem_limit,
                backend=self.device,
                device_mem_limit=self.device_mem_limit,
            )  # fmt: skip
            qa = QAConfig(level_range=self.level_range, reject_factor=self.qa_reject_factor,
                          max_saturated=self.max_saturated)  # fmt: skip
            masking = Masking(
                mask_sources=self.mask_sources, source_sigma=self.source_sigma,
                source_grow=self.source_grow, source_iters=self.source_iters,
                source_npixels=self.source_npixels, saturation=self.saturation,
            )  # fmt: skip
            calibration = Calibration(
                overscan=self.overscan, overscan_axis=self.overscan_axis,
                overscan_model=self.overscan_model, trim=self.trim, bias=self.bias,
                dark=self.dark, exposure_key=self.exposure_key, gain=self.gain,
            )  # fmt: skip
        except (ValueError, TypeError) as exc:
            text = str(exc).replace("level_range", "--level-range")
            text = _NOISE_PARAM.sub(lambda m: "--" + m[1].replace("_", "-"), text)
            text = _CALIBRATION_PARAM.sub(lambda m: "--" + m[1].replace("_", "-"), text)
            text = _MASK_PARAM.sub(lambda m: "--" + m[1].replace("_", "-"), text)
            raise OptionError(text.replace("reject_factor", "--qa-reject-factor")) from None
        where = []
        for item in self.where:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise OptionError(f"--where {item!r}: expected KEY=VALUE")
            where.append((key.strip().upper(), value))
        for name in ("imagetyp_key", "filter_key"):
            flag = "--" + name.replace("_", "-")
            key = str(getattr(self, name)).strip().upper()
            if not key or "," in key or "=" in key:
                raise OptionError(f"{flag} {getattr(self, name)!r}: expected one header key")
            object.__setattr__(self, name, key)
        if self.group_by is None:
            object.__setattr__(self, "group_by", self.filter_key)
        keys = tuple(k.strip().upper() for k in self.group_by.split(",") if k.strip())
        if not keys:
            raise OptionError("--group-by needs at least one header key")
        if isinstance(self.min_frames, bool) or not isinstance(self.min_frames, int):
            raise OptionError(f"--min-frames: expected an integer >= 1, got {self.min_frames!r}")
        if self.min_frames < 1:
            raise OptionError(f"--min-frames: expected an integer >= 1, got {self.min_frames}")
        try:
            specs = parse_ext_list(self.ext, param="--ext")
        except (ValueError, TypeError) as exc:
            raise OptionError(str(exc)) from None
        if self.workers is not None and self.scheduler:
            raise OptionError("--workers and --scheduler exclude each other: give one")
        for name, value in (
            ("combine", combine), ("calibration", calibration), ("qa", qa), ("masking", masking),
            ("where_pairs", tuple(where)),
            ("group_keys", keys), ("ext_specs", specs),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    @property
    def distributed(self) -> bool:
        """Whether the run goes to a Dask cluster."""
        return self.workers is not None or bool(self.scheduler)

    def configuration(self) -> dict:
        """Every option as it was applied (file, then flags), for the report."""
        return {f.name: getattr(self, f.name) for f in sorted(fields(self), key=_name) if f.init}


def _name(f):
    return f.name


#: options that may not appear in a file, with the reason
_NOT_IN_FILE = {"config": "a config file cannot name another one", "help": "not an option"}
#: path-valued options, resolved against the config file's directory
_PATHS = ("outdir", "report", "mask", "bias", "dark")
#: the calibration's parameter names at the start of its messages, said as flags
_CALIBRATION_PARAM = re.compile(
    r"^(overscan_axis|overscan_model|overscan|trim|bias|dark|exposure_key|gain)\b"
)
#: the noise model's, nkeep's, pclip's and grow's names at the start of their messages,
#: as flags
_NOISE_PARAM = re.compile(r"^(rdnoise|noise_gain|snoise|nkeep|pclip|grow)\b")
#: the mask pass's and the saturation rule's parameter names in their messages, as flags
_MASK_PARAM = re.compile(
    r"^(mask_sources|source_sigma|source_grow|source_iters|source_npixels|saturation|"
    r"max_saturated)\b"
)
#: options that choose where the work runs; giving one as a flag drops the file's other
#: (a farm.toml with ``workers = 8`` still runs with ``--scheduler ADDR``)
_EXCLUSIVE = ("workers", "scheduler")


def build_options(flags: dict, config: str | None = None) -> RunOptions:
    """The run's options: ``config``'s values (a TOML file), then ``flags`` (the options
    given on the command line, already typed), over the defaults."""
    values = {}
    if config is not None:
        values = read_config(Path(config))
        if set(flags) & set(_EXCLUSIVE):
            for name in _EXCLUSIVE:
                values.pop(name, None)
    values.update(flags)
    return RunOptions(**values, config=config)


def read_config(path: Path) -> dict:
    """The options a TOML file sets, typed and with its paths resolved."""
    data = _load_toml(path)
    values, seen_as = {}, {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in _NOT_IN_FILE:
            raise OptionError(f"{path}: '{key}' cannot be set in the file ({_NOT_IN_FILE[name]})")
        if name not in _KINDS:
            raise OptionError(f"{path}: unknown key '{key}'{_suggest(key)}")
        if name in seen_as:
            raise OptionError(f"{path}: '{key}' and '{seen_as[name]}' are the same option")
        seen_as[name] = key
        values[name] = _convert(path, key, value, _KINDS[name])
    base = path.parent
    for name in _PATHS:
        if values.get(name) is not None:
            values[name] = _resolve(values[name], base)
    if "inputs" in values:
        values["inputs"] = [
            "@" + _resolve(v[1:], base) if v.startswith("@") else _resolve(v, base)
            for v in values["inputs"]
        ]
    return values


def _load_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise OptionError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise OptionError(f"--config {path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise OptionError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"--config {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise OptionError(f"--config {path}: not valid TOML ({exc.reason})") from None


def _suggest(key: str) -> str:
    hyphens = "-" in key
    names = [n.replace("_", "-") if hyphens else n for n in _KINDS]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return " (see 'gpuflat run --help' for the options)"


_KIND_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}


def _kind(value) -> str:
    if isinstance(value, dict):
        return "table"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _convert(path, key, value, kind):
    """The value as the command line would have given it, or a one-line OptionError."""

    def wrong(expected):
        return OptionError(f"{path}: {key}: expected {expected}, got {_kind(value)} {value!r}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("an integer >= 0")
        return value
    if kind == "strings":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise wrong("a string or an array of strings")
        return items
    if kind == "pair":
        if not isinstance(value, list) or len(value) != 2:
            raise wrong("an array of 2 values")
        return [_typed(v, float, wrong) for v in value]
    if kind == "keys" and isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise wrong("a string or an array of header keys")
        return ",".join(value)
    if kind in ("str", "keys"):
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if isinstance(kind, tuple):
        if not isinstance(value, str):
            raise wrong("a string")
        if value not in kind:
            choices = ", ".join(repr(c) for c in kind)
            raise OptionError(f"{path}: {key}: must be one of {choices}; got {value!r}")
        return value
    return _typed(value, kind, wrong)


def _typed(value, convert, wrong):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise wrong(_EXPECTED[convert])
    try:  # numbers too go through the command line's converter, as text
        return convert(value if isinstance(value, str) else str(value))
    except (TypeError, ValueError):
        raise wrong(_EXPECTED[convert]) from None


def _resolve(value: str, base: Path) -> str:
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base, value)
