"""A drop-in for ``ccdproc.combine`` (ccdproc 2.5): same signature, same numbers.

``from gpuflat.ccdproc_compat import combine`` and the guide's call runs unchanged. Like
ccdproc it clips the *unscaled* float64 data in one pass and multiplies by the scale only
when combining; its defaults are ``np.ma.mean``/``np.ma.std``; it returns float64 CCDData
with a ``StdDevUncertainty`` and a mask. Unlike ccdproc, a misspelled keyword is an error.

The common calls run on gpuflat's kernels: sigma clipping alone (centre and width given as
the callables or names people pass: ``np.ma.median``, ``np.median``, ``np.nanmedian``,
``astropy.stats.mad_std``, ``np.ma.std``, "median", "mad_std", ...), min/max clipping alone,
or no clipping, without weights or input masks. Everything else (extrema clipping, combined
rejections, weights, masks, unknown callables) runs through a plain NumPy path that follows
ccdproc's ``Combiner`` step by step, band by band under ``mem_limit``.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import mad_std, sigma_clip

from ._config import CombineConfig
from .backends import NumbaBackend
from .errors import NoFramesError

_CCDDATA_READ_KWARGS = ("unit", "hdu")


def _known(*funcs):
    return [f for f in funcs if f is not None]


_CENTERS = {
    "median": _known(np.ma.median, np.median, np.nanmedian, "median"),
    "mean": _known(np.ma.mean, np.mean, np.nanmean, "mean"),
}
_DEVS = {
    "mad_std": _known(mad_std, "mad_std"),
    "std": _known(np.ma.std, np.std, np.nanstd, "std"),
}


def combine(
    img_list,
    output_file=None,
    method="average",
    weights=None,
    scale=None,
    mem_limit=16e9,
    clip_extrema=False,
    nlow=1,
    nhigh=1,
    minmax_clip=False,
    minmax_clip_min=None,
    minmax_clip_max=None,
    sigma_clip=False,
    sigma_clip_low_thresh=3,
    sigma_clip_high_thresh=3,
    sigma_clip_func=np.ma.mean,
    sigma_clip_dev_func=np.ma.std,
    dtype=None,
    combine_uncertainty_function=None,
    overwrite_output=False,
    **ccdkwargs,
):
    """Combine images exactly as ``ccdproc.combine`` 2.5 does (see its documentation).

    Keyword arguments beyond ccdproc's own are passed to ``CCDData.read`` as ccdproc does,
    but only ``unit`` and ``hdu``; anything else is a ``TypeError`` with a suggestion.
    """
    for key in ccdkwargs:
        if key not in _CCDDATA_READ_KWARGS:
            raise TypeError(_unknown_keyword(key))
    if isinstance(img_list, str):
        img_list = [p.strip() for p in img_list.split(",") if p.strip()]
    img_list = list(img_list) if img_list is not None else []
    if not img_list:
        raise NoFramesError("img_list is empty: nothing to combine")
    if method not in ("average", "median", "sum"):
        raise ValueError(f"method must be 'average', 'median' or 'sum'; got {method!r}")
    if dtype is not None and np.dtype(dtype) != np.float64:
        raise ValueError(f"dtype: only float64 (ccdproc's default) is supported, got {dtype!r}")
    if output_file is not None and Path(output_file).exists() and not overwrite_output:
        raise FileExistsError(f"{output_file}: exists (pass overwrite_output=True to replace it)")

    center = _match(sigma_clip_func, _CENTERS)
    dev = _match(sigma_clip_dev_func, _DEVS)
    with ExitStack() as stack:
        from ._frames import open_frames

        frames = open_frames(img_list, stack, hdu=ccdkwargs.get("hdu"))
        unit = ccdkwargs.get("unit") or frames[0].unit or "adu"
        rejections = int(bool(clip_extrema)) + int(bool(minmax_clip)) + int(bool(sigma_clip))
        fast = (
            weights is None
            and combine_uncertainty_function is None
            and all(f.mask is None for f in frames)
            and not clip_extrema
            and rejections <= 1
            and (not sigma_clip or (center and dev))
        )
        config = CombineConfig(
            method=method,
            scale=_compat_scale(scale, len(frames)),
            clip="sigma" if sigma_clip and fast else "none",
            sigma_low=_threshold(sigma_clip_low_thresh),
            sigma_high=_threshold(sigma_clip_high_thresh),
            center=center or "median",
            dev=dev or "mad_std",
            min_value=minmax_clip_min if minmax_clip and fast else None,
            max_value=minmax_clip_max if minmax_clip and fast else None,
            mem_limit=mem_limit,
            backend="cpu",
        )
        band_combiner = None
        if not fast:
            band_combiner = _NumpyCombiner(
                method=method,
                weights=None if weights is None else np.asarray(weights, np.float64),
                clip_extrema=(nlow, nhigh) if clip_extrema else None,
                minmax=(minmax_clip_min, minmax_clip_max) if minmax_clip else None,
                sigma=(
                    (
                        sigma_clip_low_thresh,
                        sigma_clip_high_thresh,
                        sigma_clip_func,
                        sigma_clip_dev_func,
                    )
                    if sigma_clip
                    else None
                ),
                uncertainty_func=combine_uncertainty_function,
            )
        from ._pipeline import combine_frames

        result = combine_frames(
            frames,
            config,
            NumbaBackend(),
            dtype=np.float64,
            out_dtype=np.float64,
            clip_scaled=False,
            band_combiner=band_combiner,
        )
    if method == "sum":
        result.image[result.count == 0] = 0.0  # ccdproc's nansum of nothing
    header = result.header
    header["NCOMBINE"] = len(frames)
    ccd = CCDData(
        result.image,
        unit=unit,
        uncertainty=StdDevUncertainty(result.uncertainty),
        mask=result.mask,
        meta=header,
    )
    if output_file is not None:
        ccd.write(output_file, overwrite=overwrite_output)
    return ccd


def _unknown_keyword(key):
    names = [*inspect.signature(combine).parameters][:-1] + list(_CCDDATA_READ_KWARGS)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"combine() got an unexpected keyword argument {key!r}{hint}"


def _match(func, table):
    for name, candidates in table.items():
        if any(func is c or (isinstance(func, str) and func == c) for c in candidates):
            return name
    return None


def _threshold(value):
    return np.inf if value is None else abs(float(value))


def _compat_scale(scale, n):
    if scale is None:
        return "none"
    if callable(scale):
        return scale
    arr = np.asarray(scale, np.float64).ravel()
    if arr.size != n:
        raise ValueError(f"scale has {arr.size} values for {n} images")
    return tuple(arr)


class _NumpyCombiner:
    """ccdproc's Combiner, step by step, on one band (for the cases the kernels don't cover)."""

    def __init__(self, *, method, weights, clip_extrema, minmax, sigma, uncertainty_func):
        self.method = method
        self.weights = weights
        self.clip_extrema = clip_extrema
        self.minmax = minmax
        self.sigma = sigma
        self.uncertainty_func = uncertainty_func

    def __call__(self, data, mask, scales, _weights):
        n = data.shape[0]
        arr = np.ma.MaskedArray(data.astype(np.float64), mask=np.zeros(data.shape, bool))
        if mask is not None:
            arr.mask |= mask.astype(bool)
        if self.clip_extrema is not None:
            nlow, nhigh = self.clip_extrema
            order = np.argsort(arr.data, axis=0)
            cols = np.arange(data.shape[1])
            for i in range(-1 * (nhigh or 0), nlow or 0):
                arr.mask[order[i], cols] = True
        if self.minmax is not None:
            lo, hi = self.minmax
            if lo is not None:
                arr.mask[arr.data < lo] = True
            if hi is not None:
                arr.mask[arr.data > hi] = True
        if self.sigma is not None:
            low, high, func, dev = self.sigma
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr.mask |= sigma_clip(
                    arr.data, sigma_lower=low, sigma_upper=high, axis=0, copy=False,
                    maxiters=1, cenfunc=func, stdfunc=dev, masked=True,
                ).mask  # fmt: skip
        scaled = arr * scales[:, None]
        filled = np.ma.filled(scaled, np.nan) if arr.mask.any() else scaled.data
        masked_values = np.isnan(filled).sum(axis=0)
        survivors = n - masked_values
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.method == "median":
                image = np.nanmedian(filled, axis=0)
                func = self.uncertainty_func
                unc = (
                    mad_std(filled, axis=0, ignore_nan=True)
                    if func is None
                    else func(filled, axis=0)
                )
                unc = unc / np.sqrt(survivors)
            else:
                if self.weights is not None:
                    summed = np.nansum(filled * self.weights[:, None], axis=0)
                    image = summed / np.nansum(self.weights) if self.method == "average" else summed
                else:
                    image = (
                        np.nanmean(filled, axis=0)
                        if self.method == "average"
                        else np.nansum(filled, axis=0)
                    )
                func = self.uncertainty_func or np.nanstd
                unc = np.asarray(func(filled, axis=0)) / np.sqrt(survivors)
                if self.method == "sum":
                    unc = unc * survivors
        return (
            np.asarray(image, np.float64),
            np.asarray(unc, np.float64),
            survivors.astype(np.int32),
        )
