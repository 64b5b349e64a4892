"""A drop-in for ``ccdproc.combine`` (ccdproc 2.5): same signature, inputs, errors and numbers.

``from gpuflat.ccdproc_compat import combine`` and a ccdproc call runs unchanged. Like
ccdproc it reads files with ``CCDData.read`` semantics (``hdu``, ``unit`` and the other
``CCDData.read`` keywords, BZERO/BSCALE/BLANK as astropy scales them, a ``MASK`` extension),
hands the scale callable each frame as ``CCDData.read`` returns it (float32 for BITPIX -32,
uint16 for the usual camera files), clips the *unscaled* data in one pass and multiplies by
the scale only when combining, and returns a CCDData built on the first image (its header,
unit and WCS) in ``dtype`` (float64 by default) with a ``StdDevUncertainty`` and a mask.

The common calls run on gpuflat's numba kernel: sigma clipping alone (centre and width as
the callables or names people pass: ``np.ma.median``, ``np.median``, ``np.nanmedian``,
``astropy.stats.mad_std``, ``np.ma.std``, "median", "mad_std", ...), min/max clipping
alone, or no clipping, in float64, without weights, input masks or an uncertainty
function; the pixels that hold a NaN or an infinity are recombined the NumPy way, since
ccdproc's callables propagate them. Everything else (extrema clipping, combined
rejections, weights, masks, other ``dtype``, unknown callables) runs through a NumPy path
that follows ccdproc's ``Combiner`` step by step, band by band under ``mem_limit``.

Where it differs from ccdproc, on purpose: a misspelled keyword is a ``TypeError`` with a
suggestion (ccdproc hands it to ``CCDData.read``, which mostly ignores it); an
``ImageFileCollection`` is combined (its files, in its location; ccdproc 2.5 raises
``ValueError``); a single file name is one file (ccdproc splits it into characters); names
in a comma-separated string are stripped of spaces; per-pixel weights also work when the
images are tiled.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from contextlib import ExitStack

import numpy as np
from astropy.nddata import CCDData
from astropy.stats import mad_std, median_absolute_deviation, sigma_clip

from ._compat_read import _check_ccdkwargs, _image_list, _open, _output_template
from ._config import CombineConfig
from .backends import NumbaBackend
from .errors import NoFramesError


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
_METHODS = ("average", "median", "sum")


class _NoImagesError(NoFramesError, IndexError):
    """An empty list of images (ccdproc fails with IndexError on ``img_list[0]``)."""


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
    """Combine images as ``ccdproc.combine`` 2.5 does; see its documentation.

    Parameters and results are ccdproc's: ``img_list`` is a list of ``CCDData`` or FITS
    file names, a comma-separated string of names, a NumPy array of either, any other
    iterable of them, or an ``ImageFileCollection`` (its files, read with its ``ext``
    unless ``hdu`` is given); anything else is ``ValueError("unrecognised input for list
    of images to combine.")``. ``**ccdkwargs`` are passed to ``CCDData.read`` for files
    (``hdu="SCI"``, ``unit="adu"``, ``hdu_mask=None``, astropy.io.fits.open's keywords...).
    The same exceptions as ccdproc's are raised for a bad method, scale or weights, mixed
    units or shapes, a missing file, HDU or unit, and an existing ``output_file`` without
    ``overwrite_output``.

    ``mem_limit`` (bytes, any positive number) bounds the working memory of the combination,
    which is streamed in row bands as finely as needed; whatever the limit, one row of every
    frame and two whole frames (about 25 bytes per pixel of one frame) are held at least,
    as ccdproc too holds whole frames (it reads every file whole for every tile), and the
    output (one frame) comes on top.

    Unlike ccdproc, a keyword that is neither ccdproc's nor one ``CCDData.read`` knows is a
    ``TypeError`` with a suggestion (ccdproc passes it to ``CCDData.read``, which ignores
    most: the astropy guide's ``signma_clip_dev_func=mad_std`` left ccdproc clipping with
    the default ``np.ma.std``).

    Returns
    -------
    CCDData
        The combined image in ``dtype`` (float64 by default) on the first image's header,
        unit and WCS, with a ``StdDevUncertainty`` and a mask (True where no value
        survived).
    """
    _check_ccdkwargs(ccdkwargs, [*inspect.signature(combine).parameters][:-1])
    items = _image_list(img_list, ccdkwargs)
    if method not in _METHODS:
        raise ValueError(f"unrecognised combine method : {method}.")
    if not items:
        raise _NoImagesError("list index out of range")
    if output_file is not None and not overwrite_output and os.path.exists(output_file):
        from astropy.utils.misc import NOT_OVERWRITING_MSG

        raise OSError(NOT_OVERWRITING_MSG.format(output_file))
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    ccd = _output_template(items[0], ccdkwargs, dtype)

    with ExitStack() as stack:
        frames, natives = _open(items, ccdkwargs, stack, first=ccd)
        n, shape = len(frames), frames[0].shape
        scaling = _Scaling(scale, items, natives, ccdkwargs)
        weights = _weights(weights, n, shape)
        center = _match(sigma_clip_func, _CENTERS)
        dev = _match(sigma_clip_dev_func, _DEVS)
        low, high = (_kernel_threshold(t) for t in (sigma_clip_low_thresh, sigma_clip_high_thresh))
        minmax = (minmax_clip_min, minmax_clip_max)
        numpy_combiner = _NumpyCombiner(
            dtype=dtype,
            method=method,
            weights=weights,
            scaling=scaling,
            clip_extrema=(nlow, nhigh) if clip_extrema else None,
            minmax=minmax if minmax_clip else None,
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
        fast = (
            dtype == np.float64
            and weights is None
            and combine_uncertainty_function is None
            and all(f.mask is None for f in frames)
            and not clip_extrema
            and not (minmax_clip and sigma_clip)
            and (not sigma_clip or (center and dev and low is not None and high is not None))
            and (not minmax_clip or _kernel_minmax(*minmax))
        )
        kernel_config = CombineConfig(
            method=method,
            scale=scaling.measure if callable(scale) else "none",
            clip="sigma" if sigma_clip and fast else "none",
            sigma_low=low if sigma_clip and fast else 3.0,
            sigma_high=high if sigma_clip and fast else 3.0,
            center=center or "median",
            dev=dev or "mad_std",
            min_value=minmax_clip_min if minmax_clip and fast else None,
            max_value=minmax_clip_max if minmax_clip and fast else None,
            mem_limit=_effective_mem_limit(mem_limit, frames, fast),
            backend="cpu",
        )
        backend = NumbaBackend()
        if fast:
            band_combiner = _KernelCombiner(
                backend,
                kernel_config.kernel_params(clip_scaled=False),
                scaling,
                method,
                numpy_combiner,
            )
        else:
            band_combiner = numpy_combiner
        from ._pipeline import combine_frames

        result = combine_frames(
            frames,
            kernel_config,
            backend,
            dtype=np.float64,
            out_dtype=np.float64,
            clip_scaled=False,
            band_combiner=band_combiner,
        )
    # as ccdproc: the first image, its data replaced band by band
    ccd.data[...] = result.image
    ccd.mask[...] = result.mask
    ccd.uncertainty.array[...] = result.uncertainty
    if output_file is not None:
        ccd.write(output_file, overwrite=overwrite_output)
    return ccd


class _Scaling:
    """ccdproc's scaling array (its dtype too) or None, in ``array`` once known: a given
    array at once, a callable's values once the pipeline's first pass has read every frame
    and called :meth:`measure` on it, in order (the frames are read once, the next one
    while the callable runs on this one)."""

    def __init__(self, scale, items, natives, ccdkwargs):
        self._func = scale if callable(scale) else None
        self._items, self._natives, self._ccdkwargs = items, natives, ccdkwargs
        self._values = []
        self.array = None
        if scale is not None and not callable(scale):
            message = (
                "scaling must be a function or an array the same length as the number of images."
            )
            try:
                len(scale)
            except TypeError as err:
                raise TypeError(message) from err
            if len(scale) != len(items):
                raise ValueError(message)
            self.array = np.array(scale)

    def measure(self, buf):
        """The scale of the next frame, from the pipeline's float64 copy ``buf`` of it, as
        ccdproc computes it: the callable on the data as CCDData.read returns them."""
        i = len(self._values)
        item, native = self._items[i], self._natives[i]
        if isinstance(item, CCDData):
            data = item.data
        elif native is None:
            data = CCDData.read(item, **self._ccdkwargs).data
        else:  # the very values and dtype CCDData.read gives (see _native_dtype)
            data = buf.astype(native)
        self._values.append(self._func(data))
        if len(self._values) == len(self._items):
            self.array = np.array(self._values)
        return 1.0  # the pipeline's own scale: the combiners apply ``array``


def _weights(weights, n, shape):
    if weights is None:
        return None
    if not isinstance(weights, np.ndarray):
        raise TypeError("weights must be a numpy.ndarray.")
    if weights.shape != (n, *shape):
        if weights.ndim != 1:
            raise ValueError("1D weights expected when shapes of the data and weights differ.")
        if weights.shape[0] != n:
            raise ValueError("Length of weights not compatible with specified axis.")
    return weights


def _is_sigma_func(func):
    return (
        getattr(func, "__name__", None) == "sigma_func"
        and getattr(func, "__module__", "").split(".")[0] == "ccdproc"
    )


def _match(func, table):
    for name, candidates in table.items():
        if any(func is c or (isinstance(func, str) and func == c) for c in candidates):
            return name
    return None


def _kernel_threshold(value):
    """The threshold astropy's sigma_clip uses (``None`` or 0 mean its default, 3), if the
    kernel can take it."""
    if not value:
        return 3.0
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _kernel_minmax(lo, hi):
    for v in (lo, hi):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))):
            return False
        if v is not None and math.isnan(float(v)):
            return False
    return lo is None or hi is None or float(lo) <= float(hi)


def _effective_mem_limit(mem_limit, frames, fast):
    """``mem_limit`` for the band planner, raised to what one row band of every frame and the
    whole-frame pass need at least (ccdproc never refuses a limit); the NumPy path gets a
    quarter of it, for the temporary copies NumPy makes of a band."""
    from ._plan import plan_bands

    if isinstance(mem_limit, bool) or not isinstance(mem_limit, (int, float, np.number)):
        raise TypeError(f"mem_limit must be a number of bytes, got {type(mem_limit).__name__}")
    if not mem_limit > 0:
        raise ValueError(f"mem_limit must be a positive number of bytes, got {mem_limit!r}")
    masked = any(f.mask is not None for f in frames)
    least = plan_bands(len(frames), frames[0].shape, itemsize=8, masked=masked, mem_limit=math.inf)
    need = max(least.pass1_bytes, least.bytes_per_row)
    limit = float(mem_limit) if fast else float(mem_limit) / 4
    return min(max(limit, need), 1e300)


# -- band combiners ----------------------------------------------------------------------------


class _KernelCombiner:
    """gpuflat's kernel on a band; the pixels with a NaN or infinite sample, which ccdproc's
    callables (``np.ma.median``, ``np.nanmean`` of an inf...) treat their own way, are
    recombined with :class:`_NumpyCombiner`."""

    def __init__(self, backend, params, scaling, method, fallback):
        self.backend, self.params, self.scaling = backend, params, scaling
        self.method, self.fallback = method, fallback

    def __call__(self, data, mask, _scales, _weights):
        n, npix = data.shape
        scales = self.scaling.array
        scales = np.ones(n) if scales is None else np.asarray(scales, np.float64)
        if not np.all(np.isfinite(scales)):
            return self.fallback(data, mask, _scales, _weights)
        rejected = np.zeros(n, np.int64)
        image, uncert, count = self.backend.combine_band(
            data, None, scales, None, self.params, rejected=rejected
        )
        # every sample survived or was clipped: none was NaN, infinite (or out of min/max)
        if int(count.sum()) + int(rejected.sum()) < n * npix:
            suspect = np.flatnonzero(count < n)  # a pixel with all n samples is all finite
            bad = suspect[~np.isfinite(data[:, suspect]).all(axis=0)]
            if bad.size:
                image[bad], uncert[bad], count[bad] = self.fallback.combine(data[:, bad], None)
        if self.method == "sum":
            image[count == 0] = 0.0  # ccdproc's nansum of nothing
        return image, uncert, count


class _NumpyCombiner:
    """ccdproc's Combiner, step by step, on one band (for the cases the kernel doesn't
    cover). Bands come in order: ``pos`` is where the next one starts in the flat frame."""

    def __init__(self, *, dtype, method, weights, scaling, clip_extrema, minmax, sigma,
                 uncertainty_func):  # fmt: skip
        self.dtype = dtype
        self.method = method
        self.weights = weights
        self.scaling = scaling
        self.clip_extrema = clip_extrema
        self.minmax = minmax
        self.sigma = sigma
        self.uncertainty_func = uncertainty_func
        self.pos = 0

    def __call__(self, data, mask, _scales, _weights):
        npix = data.shape[1]
        weights = self.weights
        if weights is not None:
            weights = weights.reshape(len(weights), -1)
            if weights.shape[1] > 1:  # per pixel: this band's
                weights = weights[:, self.pos : self.pos + npix]
        self.pos += npix
        return self.combine(data, mask, weights)

    def combine(self, data, mask, weights=None):
        n = data.shape[0]
        arr = np.ma.MaskedArray(data.astype(self.dtype), mask=np.zeros(data.shape, bool))
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
        scaling = self.scaling.array
        scaled = arr if scaling is None else arr * scaling[:, np.newaxis]
        filled = np.ma.filled(scaled, fill_value=np.nan) if arr.mask.any() else scaled.data
        masked_values = np.isnan(filled).sum(axis=0)
        survivors = n - masked_values
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            func = self.uncertainty_func
            if self.method == "median" and _is_sigma_func(func):
                func = None  # ccdproc calls its own default with ignore_nan=True
            if self.method == "median":
                image = np.nanmedian(filled, axis=0)
                if func is None:  # ccdproc's sigma_func
                    unc = median_absolute_deviation(filled, axis=0, ignore_nan=True)
                    unc = unc * 1.482602218505602
                else:
                    unc = func(filled, axis=0)
            else:
                if self.weights is not None:
                    w = weights.astype("float64")
                    summed = np.nansum(filled * w, axis=0)
                    image = summed / np.nansum(w, axis=0) if self.method == "average" else summed
                else:
                    image = (
                        np.nanmean(filled, axis=0)
                        if self.method == "average"
                        else np.nansum(filled, axis=0)
                    )
                unc = (np.nanstd if func is None else func)(filled, axis=0)
            unc /= np.sqrt(n - masked_values)
            unc = np.asarray(unc)
            if self.method == "sum":
                unc *= n - masked_values
        return np.asarray(image), unc, survivors.astype(np.int32)
