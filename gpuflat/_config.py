"""The frozen, validated configuration of one combination. Defaults follow the astropy CCD
reduction guide ("Combining flats"): median scaling, 5-sigma clipping about the median with
a MAD-based width, one pass, average, 350 MB."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .backends._params import CENTERS, DEVS, METHODS, KernelParams

SCALE_WORDS = ("median", "mean", "none")
CLIPS = ("sigma", "ccdclip", "pclip", "none")
PCLIP_DEFAULT = -0.5  #: pclip when clip="pclip" and none is given (IRAF imcombine's default)
#: the noise model's options: (name, default, the values allowed)
NOISE_OPTIONS = (("rdnoise", ">= 0"), ("noise_gain", "> 0"), ("snoise", ">= 0"))
BACKENDS = ("auto", "cpu", "cuda")
#: the largest grow radius (pixels): the halo rows a band is read with
MAX_GROW = 64.0


@dataclass(frozen=True)
class CombineConfig:
    """Every option of a combination, validated once (see :func:`gpuflat.combine`)."""

    method: str = "average"
    scale: str | tuple[float, ...] | Callable = "median"
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
    weights: tuple[float, ...] | None = None
    rdnoise: float | str = 0.0
    noise_gain: float | str = 1.0
    snoise: float | str = 0.0
    nkeep: int = 0
    #: pclip's percentile pixel (clip='pclip' only; None there: IRAF's -0.5)
    pclip: float | None = None
    #: IRAF imcombine's grow: a sample the rejection took also takes its frame's samples
    #: within this radius in pixels (a disk); 0 = none (see docs/kernel-contract.md, "Grow")
    grow: float = 0.0
    mem_limit: float = 350e6
    backend: str = "auto"
    #: bytes of device memory a GPU combination may use (None: half the free device memory);
    #: the stack stays on the device between the two passes when it fits
    device_mem_limit: float | None = None

    def __post_init__(self):
        _choice("method", self.method, tuple(METHODS))
        _choice("clip", self.clip, CLIPS)
        _choice("center", self.center, tuple(CENTERS))
        _choice("dev", self.dev, tuple(DEVS))
        _choice("backend", self.backend, BACKENDS)
        for name in ("sigma_low", "sigma_high"):
            value = getattr(self, name)
            _number(name, value)
            if not value >= 0:  # also rejects NaN
                raise ValueError(
                    f"{name} must be >= 0 (inf for no bound on that side), got {value!r}"
                )
        if self.maxiters is not None:
            _integer("maxiters", self.maxiters, minimum=1, extra=" or None (until nothing changes)")
        for name in ("min_value", "max_value"):
            value = getattr(self, name)
            if value is not None:
                _number(name, value)
                if math.isnan(value):
                    raise ValueError(f"{name} must be a number or None, got nan")
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValueError(
                f"min_value ({self.min_value}) must not be greater than "
                f"max_value ({self.max_value})"
            )
        for name, allowed in NOISE_OPTIONS:
            object.__setattr__(self, name, _noise_option(name, getattr(self, name), allowed))
        _integer("nkeep", self.nkeep, minimum=-(2**31), extra=" (< 0: the most to reject)")
        self._check_pclip()
        _number("grow", self.grow)
        if not (0 <= self.grow <= MAX_GROW):  # also rejects NaN
            raise ValueError(
                f"grow must be a radius in pixels from 0 (none) to {MAX_GROW:g}, got {self.grow!r}"
            )
        object.__setattr__(self, "grow", float(self.grow))
        _integer("nlow", self.nlow, minimum=0)
        _integer("nhigh", self.nhigh, minimum=0)
        _number("mem_limit", self.mem_limit)
        if not self.mem_limit > 0 or math.isinf(self.mem_limit):
            raise ValueError(
                f"mem_limit must be a positive number of bytes, got {self.mem_limit!r}"
            )
        if self.device_mem_limit is not None:
            _number("device_mem_limit", self.device_mem_limit)
            if not self.device_mem_limit > 0 or math.isinf(self.device_mem_limit):
                raise ValueError(
                    "device_mem_limit must be a positive number of bytes or None (half the "
                    f"free device memory), got {self.device_mem_limit!r}"
                )
        object.__setattr__(self, "scale", _normalise_scale(self.scale))
        if self.weights is not None:
            object.__setattr__(self, "weights", _positive_vector("weights", self.weights))

    def _check_pclip(self):
        """pclip's parameter, only with clip='pclip' (then IRAF's default when None), and
        the options percentile clipping does not use left at their defaults."""
        if self.clip != "pclip":
            if self.pclip is not None:
                raise ValueError(
                    f"pclip is only used with clip='pclip'; got pclip={self.pclip!r} with "
                    f"clip={self.clip!r}"
                )
            return
        if self.pclip is None:
            object.__setattr__(self, "pclip", PCLIP_DEFAULT)
        value = self.pclip
        _number("pclip", value)
        if not math.isfinite(value) or value == 0 or (abs(value) >= 1 and value % 1):
            raise ValueError(
                "pclip must be a fraction of the frames (0 < |pclip| < 1) or a whole number "
                f"of them (|pclip| >= 1), negative below the median; got {value!r}"
            )
        object.__setattr__(self, "pclip", float(value))
        for name, want, why in (
            ("center", "median", "the clipping is about the median"),
            ("dev", "mad_std", "the width is the distance to the percentile pixel"),
            ("maxiters", 1, "the clipping makes one pass, as IRAF's"),
        ):
            if getattr(self, name) != want:
                raise ValueError(
                    f"{name} must be {want!r} with clip='pclip' ({why}); "
                    f"got {getattr(self, name)!r}"
                )

    def kernel_params(self, *, clip_scaled: bool = True, noise=None) -> KernelParams:
        """The numbers the backends' combine kernel takes; with ccdclip, ``noise`` is the
        per-frame (rdnoise, gain, snoise) as three sequences (see :meth:`noise_model`)."""
        ccdclip = self.clip == "ccdclip"
        if ccdclip and noise is None:
            raise ValueError("clip='ccdclip' needs the per-frame noise model (noise_model)")
        rdnoise, gain, snoise = noise if ccdclip else ((), (), ())
        return KernelParams(
            clip_scaled=int(clip_scaled),
            min_value=-math.inf if self.min_value is None else float(self.min_value),
            max_value=math.inf if self.max_value is None else float(self.max_value),
            nlow=self.nlow,
            nhigh=self.nhigh,
            sigma=int(self.clip in ("sigma", "ccdclip", "pclip")),
            center=CENTERS[self.center],
            dev=DEVS[self.dev],
            sigma_low=float(self.sigma_low),
            sigma_high=float(self.sigma_high),
            maxiters=-1 if self.maxiters is None else self.maxiters,
            method=METHODS[self.method],
            ccdclip=int(ccdclip),
            nkeep=self.nkeep,
            rdnoise=tuple(rdnoise),
            gain=tuple(gain),
            snoise=tuple(snoise),
            pclip=self.pclip if self.clip == "pclip" else 0.0,
        )

    def noise_model(self, headers, names) -> tuple[tuple[float, ...], ...] | None:
        """The per-frame (rdnoise, gain, snoise) of ccdclip, numbers as given or each
        frame's header keyword; None without ccdclip. A keyword that is missing or holds a
        bad value is a :class:`~gpuflat.errors.GpuflatError` naming the file."""
        from .errors import GpuflatError

        if self.clip != "ccdclip":
            return None
        out = []
        for name, allowed in NOISE_OPTIONS:
            option = getattr(self, name)
            if not isinstance(option, str):
                out.append((float(option),) * len(names))
                continue
            values = []
            for header, frame in zip(headers, names, strict=True):
                if option not in header:
                    raise GpuflatError(f"{frame}: no {option} keyword in the header ({name})")
                try:
                    value = _noise_option(name, header[option], allowed, keyword=False)
                except (TypeError, ValueError):
                    raise GpuflatError(
                        f"{frame}: {option} = {header[option]!r} is not a valid {name} "
                        f"(a number {allowed})"
                    ) from None
                values.append(float(value))
            out.append(tuple(values))
        return tuple(out)

    def describe(self) -> dict:
        """The parameters as plain JSON-able values (for provenance and reports)."""
        out = asdict(self)
        scale = self.scale
        if callable(scale):
            out["scale"] = f"callable {getattr(scale, '__name__', type(scale).__name__)}"
        elif isinstance(scale, tuple):
            out["scale"] = list(scale)
        if self.weights is not None:
            out["weights"] = list(self.weights)
        return out


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def _integer(name, value, *, minimum, extra=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{extra}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{extra}, got {value!r}")


def _noise_option(name, value, allowed, *, keyword=True):
    """A noise-model option: a number in range, or (``keyword``) a header keyword."""
    if keyword and isinstance(value, str):
        key = value.strip().upper()
        try:
            number = float(key)
        except ValueError:
            number = None
        if number is not None:
            return _noise_option(name, number, allowed, keyword=False)
        if not key or not key.replace("-", "").replace("_", "").isalnum() or len(key) > 8:
            raise ValueError(
                f"{name} must be a number {allowed} or a header keyword; got {value!r}"
            )
        return key
    _number(name, value)
    ok = value > 0 if allowed == "> 0" else value >= 0
    if not ok or math.isinf(value):  # also rejects NaN
        raise ValueError(
            f"{name} must be a finite number {allowed} or a header keyword; got {value!r}"
        )
    return float(value)


def _positive_vector(name, values) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be finite positive numbers, one per frame; got {values!r}")
    return tuple(float(v) for v in arr)


def _normalise_scale(scale):
    """'median' | 'mean' | 'none' | 'exptime:KEY' | sequence of factors | callable."""
    if callable(scale):
        return scale
    if isinstance(scale, str):
        if scale in SCALE_WORDS:
            return scale
        word, _, key = scale.partition(":")
        if word == "exptime" and key.strip():
            return f"exptime:{key.strip().upper()}"
        raise ValueError(
            "scale must be 'median', 'mean', 'none', 'exptime:KEYWORD' (e.g. 'exptime:EXPTIME'), "
            f"a sequence of per-frame factors or a callable; got {scale!r}"
        )
    if scale is None:
        return "none"
    return _positive_vector("scale", scale)
