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

import difflib
import inspect
import math
import os
import warnings
from contextlib import ExitStack

import numpy as np
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import mad_std, median_absolute_deviation, sigma_clip

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

#: ``CCDData.read`` keywords (the FITS reader's own, the registry's) that do not change the
#: pixel values: with only these, files are streamed by gpuflat's band reader
_NEUTRAL_READ_KWARGS = {
    "hdu", "unit", "hdu_uncertainty", "hdu_mask", "hdu_flags", "key_uncertainty_type",
    "hdu_psf", "format", "cache", "memmap", "lazy_load_hdus",
}  # fmt: skip
#: ``astropy.io.fits.open`` keywords documented beyond its signature
_FITS_OPEN_EXTRA = {
    "uint", "ignore_missing_end", "checksum", "disable_image_compression",
    "do_not_scale_image_data", "character_as_bytes", "ignore_blank", "scale_back",
    "output_verify",
}  # fmt: skip


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
    _check_ccdkwargs(ccdkwargs)
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


# -- keywords and inputs ------------------------------------------------------------------


def _read_keywords():
    """Every keyword ``CCDData.read`` takes for a FITS file."""
    from astropy.io import fits
    from astropy.nddata.ccddata import fits_ccddata_reader

    names = {"format", "cache"} | _FITS_OPEN_EXTRA
    for func in (fits_ccddata_reader, fits.open):
        for p in list(inspect.signature(func).parameters.values())[1:]:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(p.name)
    return names


def _check_ccdkwargs(ccdkwargs):
    if not ccdkwargs:
        return
    known = _read_keywords()
    for key in ccdkwargs:
        if key not in known:
            own = [*inspect.signature(combine).parameters][:-1]
            close = difflib.get_close_matches(key, own + sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if close and close[0] in own:
                hint += (
                    f" (ccdproc.combine passes {key!r} on to CCDData.read, which ignores it, "
                    f"so ccdproc ran with the default {close[0]}; pass that default to get "
                    "ccdproc's result)"
                )
            raise TypeError(f"combine() got an unexpected keyword argument {key!r}{hint}")


def _image_list(img_list, ccdkwargs):
    """ccdproc's reading of ``img_list``, plus ImageFileCollection and a single file name."""
    if isinstance(img_list, list):
        return img_list
    if hasattr(img_list, "files_filtered") and hasattr(img_list, "location"):
        location = img_list.location or ""
        if getattr(img_list, "ext", 0) not in (0, None):
            ccdkwargs.setdefault("hdu", img_list.ext)
        return [os.path.join(location, f) for f in (img_list.files or [])]
    if isinstance(img_list, np.ndarray):
        return img_list.tolist()
    if isinstance(img_list, str):
        return [p.strip() for p in img_list.split(",") if p.strip()]
    try:
        return list(img_list)
    except TypeError as err:
        raise ValueError("unrecognised input for list of images to combine.") from err


def _output_template(first, ccdkwargs, dtype):
    """ccdproc's output object: the first image, in ``dtype``, with an uncertainty and a mask."""
    if isinstance(first, CCDData):
        ccd = first.copy()
    elif isinstance(first, (str, os.PathLike)):
        ccd = CCDData.read(first, **ccdkwargs)
    else:
        raise TypeError(_not_an_image(0, first))
    if ccd.data.dtype != dtype:
        ccd.data = ccd.data.astype(dtype)
    if ccd.uncertainty is None:
        ccd.uncertainty = StdDevUncertainty(np.zeros_like(ccd.data))
    if ccd.mask is None:
        ccd.mask = np.zeros_like(ccd.data, dtype=bool)
    return ccd


def _not_an_image(i, item):
    return f"img_list[{i}]: expected a CCDData or a FITS file name, got {type(item).__name__}"


# -- frames ---------------------------------------------------------------------------------


def _open(items, ccdkwargs, stack, *, first):
    """The frames and, per frame, the dtype ``CCDData.read`` gives its data (None: unknown,
    read it with astropy when needed). Units and shapes must agree, as ccdproc checks."""
    from ._frames import ArrayFrame, FitsFrame

    frames, natives = [], []
    for i, item in enumerate(items):
        if isinstance(item, CCDData):
            frame = ArrayFrame(item.data, name=f"img_list[{i}]", mask=item.mask, unit=item.unit)
            native = item.data.dtype
        elif isinstance(item, (str, os.PathLike)):
            info = _probe(item, ccdkwargs)
            if info["fast"]:
                frame = FitsFrame(item, hdu=info["index"])
                stack.callback(frame.close)
            else:
                frame = _ReadFrame(item, ccdkwargs, info["shape"], info["mask"])
            frame.unit = info["unit"]
            native = info["native"]
        else:
            raise TypeError(_not_an_image(i, item))
        if frame.unit != first.unit:
            raise TypeError("CCDData objects don't have the same unit.")
        if len(frame.shape) != 2 or frame.shape != first.shape:
            raise TypeError("CCDData objects are not the same size.")
        frames.append(frame)
        natives.append(native)
    return frames, natives


def _probe(path, ccdkwargs):
    """What ``CCDData.read(path, **ccdkwargs)`` would read, from the headers: the HDU, the
    unit, whether there is a mask, the shape, the data's dtype, and whether gpuflat's band
    reader gives the very same values (``fast``). Errors are astropy's own."""
    from astropy import units as u
    from astropy.io import fits

    reader = inspect.signature(_fits_reader()).parameters
    open_kwargs = {
        k: v for k, v in ccdkwargs.items() if k not in reader and k not in ("format", "cache")
    }
    hdu = ccdkwargs.get("hdu", 0)
    with fits.open(path, **open_kwargs) as hdul:
        header = hdul[hdu].header  # KeyError or IndexError as CCDData.read's
        index = hdul.index_of(hdu)
        if hdu == 0 and hdul.fileinfo(0)["datSpan"] == 0:
            for i, row in enumerate(hdul.info(output=False)):
                if row[3] == "ImageHDU" and hdul.fileinfo(i)["datSpan"] > 0:
                    index = i
                    merged = hdul[i].header.copy()
                    merged.extend(header, unique=True)
                    header = merged
                    break
        h = hdul[index]
        unit = ccdkwargs.get("unit")
        bunit = header.get("BUNIT") if "bunit" in header else None
        if unit is None and bunit:
            bunit = bunit.lower() if bunit.strip().lower() == "adu" else bunit
            bunit = CCDData.known_invalid_fits_unit_strings.get(bunit, bunit)
        unit = unit or bunit
        if not unit:
            raise ValueError("a unit for CCDData must be specified.")
        hdu_mask = ccdkwargs.get("hdu_mask", "MASK")
        has_mask = hdu_mask is not None and hdu_mask in hdul
        compressed = isinstance(h, fits.CompImageHDU)
        shape = (
            tuple(h.shape)
            if compressed
            else tuple(h.header.get(f"NAXIS{k}", 0) for k in range(h.header.get("NAXIS", 0), 0, -1))
        )
        native = None if compressed else _native_dtype(h.header)
        fast = (
            set(ccdkwargs) <= _NEUTRAL_READ_KWARGS
            and not _file_compressed(path)
            and not has_mask
            and isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
            and len(shape) == 2
            and (compressed or native is not None)
        )
    return {
        "index": index, "unit": u.Unit(unit), "mask": has_mask, "shape": shape,
        "native": native if fast else None, "fast": fast,
    }  # fmt: skip


def _file_compressed(path):
    """A gzip, bzip2 or zip file (astropy opens those; the band reader reads plain FITS)."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    return magic[:2] in (b"\x1f\x8b", b"PK") or magic == b"BZh"


def _fits_reader():
    from astropy.nddata.ccddata import fits_ccddata_reader

    return fits_ccddata_reader


def _native_dtype(header):
    """The dtype of astropy's ``hdu.data`` (``uint=True``) when gpuflat's band reader gives
    the very same values in float64 (see ``_frames.scale_raw``), else None."""
    bitpix = header["BITPIX"]
    bscale, bzero, blank = header.get("BSCALE", 1), header.get("BZERO", 0), header.get("BLANK")
    if bitpix < 0:
        return np.dtype(f"f{-bitpix // 8}")
    if bitpix == 64:
        return None  # int64 values beyond 2**53 do not survive float64
    if bscale == 1 and bzero == (-128 if bitpix == 8 else 1 << (bitpix - 1)):
        # unsigned convention: astropy keeps BLANK as a value there, gpuflat makes it NaN
        return None if blank is not None else np.dtype("i1" if bitpix == 8 else f"u{bitpix // 8}")
    if bscale == 1 and bzero == 0 and blank is None:
        return np.dtype("u1" if bitpix == 8 else f"i{bitpix // 8}")
    if blank is not None and not blank:
        return None  # astropy does not blank out BLANK = 0
    return np.dtype(np.float32 if bitpix <= 16 else np.float64)


class _ReadFrame:
    """A file read the way ccdproc reads it, ``CCDData.read`` for every band, for the
    keywords and files the band reader does not reproduce (a MASK extension, ``uint=False``,
    BLANK in unsigned data, 64-bit integers...)."""

    def __init__(self, path, ccdkwargs, shape, has_mask):
        from astropy.io import fits

        self.name = str(path)
        self._path, self._kwargs = path, ccdkwargs
        self.shape = shape
        self.mask = True if has_mask else None  # read with the rows
        self.unit = None
        self.header = fits.Header()  # unused: the output has the first image's, as ccdproc
        self._band_mask = (None, None, None)

    def read(self):
        return CCDData.read(self._path, **self._kwargs)

    def read_rows(self, r0, r1, out):
        ccd = self.read()
        out[...] = ccd.data[r0:r1]
        mask = None if ccd.mask is None else np.array(ccd.mask[r0:r1], bool)
        self._band_mask = (r0, r1, mask)

    def read_mask_rows(self, r0, r1):
        b0, b1, mask = self._band_mask
        if (b0, b1) != (r0, r1):
            ccd = self.read()
            mask = None if ccd.mask is None else np.array(ccd.mask[r0:r1], bool)
        return mask

    def close(self):
        pass


# -- scale, weights, thresholds ---------------------------------------------------------------


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
