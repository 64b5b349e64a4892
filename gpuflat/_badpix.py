"""Bad-pixel masks from flats: ccdproc's ``ccdmask`` (IRAF's ccdmask as ccdproc 2.5 ports
it) computed in row bands by the numba kernels of :mod:`gpuflat.backends._numba_ccdmask`
(through :mod:`gpuflat.backends._ccdmask`),
hot pixels from a master dark, and the mask product.

``ccdmask`` returns exactly ``ccdproc.ccdmask``'s mask (``byblocks=False``, its default):
the moving median over ``nlmed`` x ``ncmed`` is subtracted, the local sigma is half the
spread between the 30.9th and 69.1st percentiles of the result over ``nlsig`` x ``ncsig``,
pixels below ``-lsigma`` or above ``hsigma`` sigmas are bad, as are values that are not
finite; ``findbadcolumns`` then fills short gaps (fewer than ``ngood + 1`` lines) between
bad pixels of a column. Each band of output rows reads the rows its windows reach (the
halo, reflected at the image's edges as SciPy does), so the mask does not depend on the
band height.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._frames import FitsFrame
from .errors import ShapeMismatchError

#: The mask's value where a pixel is bad (0 = good), as ccdproc's True.
BAD = 1


@dataclass(frozen=True)
class MaskParams:
    """ccdmask's parameters, IRAF's and ccdproc's names and ccdproc's defaults (IRAF's
    lsigma and hsigma are 6), validated once."""

    ncmed: int = 7
    nlmed: int = 7
    ncsig: int = 15
    nlsig: int = 15
    lsigma: float = 9.0
    hsigma: float = 9.0
    ngood: int = 5
    findbadcolumns: bool = False

    def __post_init__(self):
        for name in ("ncmed", "nlmed", "ncsig", "nlsig"):
            _int(name, getattr(self, name), 1)
        _int("ngood", self.ngood, 0)
        for name in ("lsigma", "hsigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}: must be a positive finite number")
        if not isinstance(self.findbadcolumns, (bool, np.bool_)):
            raise TypeError(f"findbadcolumns must be True or False, got {self.findbadcolumns!r}")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _int(name, value, least):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name}={value}: must be an integer >= {least}")


def ccdmask(
    ratio,
    *,
    findbadcolumns: bool = False,
    byblocks: bool = False,
    ncmed: int = 7,
    nlmed: int = 7,
    ncsig: int = 15,
    nlsig: int = 15,
    lsigma: float = 9,
    hsigma: float = 9,
    ngood: int = 5,
    mem_limit: float = 350e6,
    hdu=None,
) -> np.ndarray:
    """``ccdproc.ccdmask``'s mask, pixel for pixel, in a fraction of its time.

    Parameters
    ----------
    ratio : ndarray, CCDData or path
        The 2-D image (typically the ratio of two flats of different levels). A FITS file
        is read in row bands (``hdu``: which HDU, default the first image). Float32 data
        are computed in float32 and float64 data in float64, as NumPy computes them in
        ccdproc; other types in float64 (ccdproc would compute in the integer type).
    findbadcolumns, ncmed, nlmed, ncsig, nlsig, lsigma, hsigma, ngood
        ccdproc's parameters and defaults (see :class:`MaskParams`).
    byblocks : bool
        Only ``False`` (ccdproc's default, the moving-window sigma) is supported.
    mem_limit : float
        Working memory in bytes; the mask (one byte per pixel) is not counted.

    Returns
    -------
    ndarray of bool
        True where the pixel is bad, as ``ccdproc.ccdmask`` returns it.
    """
    if byblocks is not False:
        raise ValueError("byblocks=True is not supported (only ccdproc's default, False)")
    params = MaskParams(ncmed, nlmed, ncsig, nlsig, lsigma, hsigma, ngood, findbadcolumns)
    _check_mem_limit(mem_limit)
    return compute_mask(ratio, params, mem_limit=mem_limit, hdu=hdu).view(bool)


def _check_mem_limit(mem_limit):
    if isinstance(mem_limit, bool) or not isinstance(mem_limit, numbers.Real):
        raise TypeError(f"mem_limit must be a number of bytes, got {type(mem_limit).__name__}")
    if not mem_limit > 0:
        raise ValueError(f"mem_limit={mem_limit!r}: must be a positive number of bytes")


def compute_mask(ratio, params: MaskParams, *, mem_limit=350e6, hdu=None, rows=None):
    """The uint8 mask (1 = bad) of ``ratio`` (validated ``params``). ``rows``: the band
    height (default: planned under ``mem_limit``)."""
    from .backends import _ccdmask as kernel
    from .backends._numba_ccdmask import fill_short_gaps

    source = _Source(ratio, hdu)
    try:
        nrows, ncols = source.shape
        mask = np.zeros((nrows, ncols), np.uint8)
        height = rows or plan_rows(source.shape, source.dtype, params, mem_limit, source.inline)
        med = (params.nlmed, params.ncmed)
        for r0 in range(0, nrows, height):
            r1 = min(nrows, r0 + height)
            m0, m1 = reach(r0, r1, params.nlsig, nrows)  # medsub rows the windows read
            d0, d1 = reach(m0, m1, params.nlmed, nrows)  # data rows the medians read
            data, data_r0 = source.rows(d0, d1)
            medsub = np.empty((m1 - m0, ncols), data.dtype)
            kernel.medsub_band(data, data_r0, nrows, m0, m1, *med, medsub, m0)
            kernel.mask_band(data, data_r0, medsub, m0, nrows, r0, r1, params.nlsig,
                             params.ncsig, params.lsigma, params.hsigma, mask, 0)  # fmt: skip
    finally:
        source.close()
    if params.findbadcolumns:
        fill_short_gaps(mask, params.ngood)
    return mask


def reach(r0, r1, size, n) -> tuple[int, int]:
    """The image rows that windows of ``size`` rows centred (SciPy's way) on the rows
    ``[r0, r1)`` read, reflected at the edges, as one range ``[lo, hi)``."""
    virtual = np.arange(r0 - size // 2, r1 - size // 2 + size - 1)
    if n == 1:
        return 0, 1
    period = 2 * n
    folded = np.where(virtual < 0, -virtual - 1, virtual) % period
    real = np.where(folded < n, folded, period - folded - 1)
    return int(real.min()), int(real.max()) + 1


def band_bytes(shape, dtype, params: MaskParams, inline: bool) -> tuple[int, int]:
    """Working memory of a band: ``(per band row, per band)``. Per row, ``medsub`` and the
    data read (unless the image is in memory already); per band, their halos (the rows the
    windows reach beyond the band) and each thread's column state (the median's sorted
    columns and lanes, the sigma window's counts by bin edge: a few hundred bytes a column)."""
    from .backends import _threads

    ncols = shape[1]
    item = np.dtype(dtype).itemsize
    copies = 1 if inline else 2
    per_row = ncols * item * copies
    halo = 2 * (params.nlsig // 2 + params.nlmed // 2) * ncols * item * copies
    run = 1 << max(0, (params.nlmed - 1).bit_length())
    state = ncols * (run * item + 4 * 32 + 48) + run * params.ncmed * 64 * item
    return per_row, halo + _threads.parts() * state


def plan_rows(shape, dtype, params: MaskParams, mem_limit, inline: bool) -> int:
    """Band height whose working memory (:func:`band_bytes`) fits ``mem_limit``."""
    nrows, ncols = shape
    per_row, fixed = band_bytes(shape, dtype, params, inline)
    if fixed + per_row > mem_limit:
        raise ValueError(
            f"mem_limit={mem_limit:.4g} bytes is too small for a {nrows}x{ncols} image with "
            f"these windows: at least {fixed + per_row:.4g} bytes are needed"
        )
    rows = int((mem_limit - fixed) // per_row)
    return max(1, min(nrows, rows, max(64, (32 << 20) // max(1, per_row))))


class _Source:
    """The image to mask: an array in memory (read in place) or a FITS image HDU (read in
    row bands)."""

    def __init__(self, ratio, hdu):
        self._frame = None
        self.inline = True
        if isinstance(ratio, (str, os.PathLike)):
            self._frame = FitsFrame(ratio, hdu=hdu)
            self.shape = self._frame.shape
            self.dtype = _file_dtype(self._frame.header)
            self.inline = False
            return
        data = getattr(ratio, "data", ratio) if hasattr(ratio, "unit") else ratio
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise ValueError(f'"ratio" must be two-dimensional, got shape {arr.shape}')
        if arr.size == 0:
            raise ValueError(f'"ratio" is empty (shape {arr.shape})')
        self.dtype = np.dtype(arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64)
        self._array = np.ascontiguousarray(arr, self.dtype.newbyteorder("="))
        self.shape = self._array.shape

    def rows(self, r0, r1):
        """The rows ``[r0, r1)`` (or more) and the image row of their first row."""
        if self._frame is None:
            return self._array, 0
        out = np.empty((r1 - r0, self.shape[1]), self.dtype)
        self._frame.read_rows(r0, r1, out)
        return out, r0

    def close(self):
        if self._frame is not None:
            self._frame.close()


def _file_dtype(header):
    """float32 for single-precision float data (as astropy reads them), else float64."""
    plain = header.get("BSCALE", 1) == 1 and header.get("BZERO", 0) == 0
    return np.dtype(np.float32 if header.get("BITPIX") == -32 and plain else np.float64)


def hot_pixels(dark, *, threshold: float = 4.0, exptime: float, gain: float = 1.0):
    """The guide's hot pixels: dark current (``dark * gain / exptime``, e-/s) above
    ``threshold`` (its example's 4 e-/s). Returns a uint8 mask (1 = hot)."""
    for name, value in (("threshold", threshold), ("exptime", exptime), ("gain", gain)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(value) and (value > 0 or name == "threshold")):
            raise ValueError(f"{name}={value!r}: must be a positive finite number")
    current = np.asarray(dark, np.float64) * gain / exptime
    return (current > threshold).astype(np.uint8)


def combine_masks(*masks):
    """The OR of uint8/bool masks of one shape (the guide's ``mask_a | mask_b``)."""
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise ShapeMismatchError(
            "masks of different shapes: " + ", ".join(f"{s[0]}x{s[1]}" for s in shapes)
        )
    out = np.zeros(masks[0].shape, np.uint8)
    for m in masks:
        out |= np.asarray(m).astype(bool).view(np.uint8)
    return out


def mask_header(*, inputs: dict, params: MaskParams | None, notes: dict) -> fits.Header:
    """The mask product's header: what the guide writes (``IMAGETYP = 'flat mask'``, a
    dimensionless ``BUNIT``, so that ``CCDData.read`` takes it as it is), ``COMBINED = T``
    (a gpuflat product, never taken as a flat), the inputs (``inputs``: keyword ->
    file names), ccdmask's parameters under their IRAF names, ``notes`` (keyword ->
    (value, comment)), gpuflat's version and the date."""
    from ._version import __version__

    out = fits.Header()
    out["BUNIT"] = ("", "dimensionless: 0 = good, 1 = bad")
    out["IMAGETYP"] = ("flat mask", "a bad-pixel mask (astropy CCD guide)")
    out["COMBINED"] = (True, "a gpuflat product, never taken as a flat")
    out["MASKTYPE"] = ("ccdmask" if params else "hot pixels", "how the mask was made")
    for key, names in inputs.items():
        names = [names] if isinstance(names, (str, os.PathLike)) else list(names)
        out[key] = (os.path.basename(str(names[0]))[-68:], "input" if len(names) == 1
                    else f"first of {len(names)} inputs combined")  # fmt: skip
        for name in names:
            out.add_history(f"{key}: {name}")
    if params is not None:
        for name, value in params.as_dict().items():
            key = "FINDBADC" if name == "findbadcolumns" else name.upper()
            out[key] = (value, f"ccdmask {name}")
        out["BYBLOCKS"] = (False, "ccdmask byblocks")
    for key, (value, comment) in notes.items():
        out[key] = (value, comment)
    out["GPF_VERS"] = (__version__, "gpuflat version")
    out["GPF_DATE"] = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC")
    return out


def write_mask(path, header, planes, *, overwrite=False):
    """Write the mask product atomically and verified (checksums, read back) like the
    masters: one uint8 image in the primary HDU (``planes = [(None, mask, None)]``), or a
    mosaic's, a header-only primary HDU and one uint8 image HDU per extension (``planes =
    [((EXTNAME, EXTVER), mask, extension header), ...]``)."""
    from ._products import _commit

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use --overwrite to replace it)")
    if len(planes) == 1 and planes[0][0] is None:
        hdus = [fits.PrimaryHDU(_uint8(planes[0][1]), header)]
    else:
        hdus = [fits.PrimaryHDU(header=header)]
        for (name, ver), mask, ext_header in planes:
            h = fits.ImageHDU(_uint8(mask), ext_header, name=name)
            h.header["BUNIT"] = ""
            if ver != 1:
                h.header["EXTVER"] = ver
            hdus.append(h)
    return _commit(path, fits.HDUList(hdus), overwrite=overwrite, defer=False)


def _uint8(mask):
    return np.ascontiguousarray(np.asarray(mask).astype(bool).view(np.uint8))
