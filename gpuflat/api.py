"""The public API: :func:`combine` and :func:`combine_mosaic`. Options are validated
here, once (a frozen :class:`~gpuflat.CombineConfig`), then the frames are opened and run
through the band pipeline."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack

import numpy as np

from ._calibrate import Calibration
from ._config import CombineConfig
from ._extensions import check_scale_per, parse_ext_list, parse_one_ext
from ._frames import _is_ccddata, bad_pixel_mask, open_frames
from ._mosaic import MosaicResult, combine_mosaic_files, mosaic_mask
from ._pipeline import CombineResult, combine_frames
from ._sources import Masking
from .backends import get_backend
from .errors import NoFramesError

__all__ = ["combine", "combine_mosaic"]


def combine(
    inputs,
    *,
    method: str = "average",
    scale: str | Sequence[float] | Callable | None = "median",
    clip: str = "sigma",
    sigma_low: float = 5.0,
    sigma_high: float = 5.0,
    center: str = "median",
    dev: str = "mad_std",
    maxiters: int | None = 1,
    min_value: float | None = None,
    max_value: float | None = None,
    nlow: int = 0,
    nhigh: int = 0,
    weights: Sequence[float] | None = None,
    rdnoise: float | str = 0.0,
    noise_gain: float | str = 1.0,
    snoise: float | str = 0.0,
    nkeep: int = 0,
    pclip: float | None = None,
    grow: float = 0.0,
    mask=None,
    mem_limit: float = 350e6,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    ext: str | int | tuple[str, int] | None = None,
    overscan: str | None = None,
    overscan_axis: int | None = 1,
    overscan_model: str = "median",
    trim: str | None = None,
    bias: str | os.PathLike | None = None,
    dark: str | os.PathLike | None = None,
    exposure_key: str = "EXPTIME",
    gain: float | str | None = None,
    device_mem_limit: float | None = None,
    mask_sources: bool = False,
    source_sigma: float = 3.0,
    source_grow: float = 1.5,
    source_iters: int = 1,
    source_npixels: int = 2,
    saturation: float | str | None = None,
) -> CombineResult:
    """Combine flat frames: scale, sigma-clip per pixel across the stack, average.

    Parameters
    ----------
    inputs : paths, CCDData or 2-D arrays; a 3-D array; a glob; an ImageFileCollection
        The frames: a sequence or any iterable (a generator) of paths, CCDData and 2-D
        arrays, or a 3-D array (frames, rows, cols). A path with wildcards (``"night1/
        flat-*.fits"``; also as an item) stands for the files it matches, in sorted order;
        a ccdproc ``ImageFileCollection`` for its files (``files_filtered(include_path=
        True)``: filter it, or make it with ``filenames=`` or ``glob_include=``, to choose
        them). Files are opened once and streamed in row bands. Frames in different units
        are refused (``ValueError``), as ccdproc refuses them.
    method : {'average', 'median', 'sum'}
        How the surviving samples of a pixel are combined.
    scale : {'median', 'mean', 'none'}, 'exptime:KEYWORD', sequence or callable
        Per-frame scale: 1/median (default), 1/mean, none, 1/exposure time from a header
        keyword, explicit factors, or a callable evaluated on each whole frame that returns
        the factor (the guide's ``inv_median``).
    clip : {'sigma', 'ccdclip', 'pclip', 'none'}
        Sigma clipping on the scaled values; ``'ccdclip'`` (IRAF imcombine's) takes each
        frame's width from the CCD noise model at the centre instead of the MAD or the
        standard deviation (``rdnoise``, ``noise_gain``, ``snoise``); ``'pclip'`` (IRAF's
        percentile clipping) takes as width the distance from the median to a percentile
        pixel (``pclip``), in one pass. ``min_value``/
        ``max_value`` (raw values) and ``nlow``/``nhigh`` (extrema) reject too, with or
        without it.
    sigma_low, sigma_high : float
        Clipping bounds in units of the width; ``inf`` disables a side.
    center : {'median', 'mean'}
    dev : {'mad_std', 'std'}
        Width: 1.4826 x median absolute deviation, or the standard deviation.
    maxiters : int or None
        Clipping passes; None repeats until nothing changes.
    weights : sequence of float, optional
        Per-frame weights, renormalised over each pixel's survivors.
    rdnoise, noise_gain, snoise : float or str
        ccdclip's noise model: read noise (electrons), gain (e-/ADU) and a fractional
        "sensitivity" noise, each a number or a header keyword read from every frame
        (IRAF's RDNOISE, GAIN): sigma = sqrt((rdnoise/gain)^2 + c/gain + (snoise c)^2) in
        raw units at the centre c, carried through each frame's scale. They describe the
        data as combined: after calibration with ``gain`` (electrons), give noise_gain 1.
    nkeep : int
        IRAF's nkeep: when the clipping leaves fewer than ``nkeep`` of the frames it was
        given, the clipped ones closest to the centre come back up to that number;
        negative: at most ``-nkeep`` are clipped. Thresholds and nlow/nhigh are not undone.
    pclip : float, optional
        ``clip='pclip'`` only (default -0.5, IRAF's): the percentile pixel, counted from the
        median in the sorted samples of a pixel, below it when negative, above it when
        positive; ``|pclip| < 1`` is a fraction of half the frames, else a whole number of
        pixels (at least 1, at most half the frames). Pixels are clipped at ``sigma_low``
        / ``sigma_high`` times the distance from the median to that pixel; fewer than 3
        samples are not clipped. ``center``, ``dev`` and ``maxiters`` keep their defaults.
    grow : float
        IRAF imcombine's grow: a radius in pixels. A sample the rejection took (the
        clipping or nlow/nhigh; not a mask, a NaN or min/max) takes with it the same
        frame's samples within that distance (a disk, dx^2 + dy^2 <= grow^2); each
        pixel is combined over its survivors less those, without clipping again; with
        ``nkeep > 0`` a pixel left with fewer than ``nkeep`` keeps its result without the
        grow. For the wings of stars and cosmic rays in sky flats (docs/sky-flats.md).
        0 (default): none; at most 64.
    mask : 2-D array or path, optional
        A bad-pixel mask (nonzero = bad) applied to every frame, on top of CCDData masks.
        NaN and inf samples never count either.
    mem_limit : float
        Bytes of working memory for the streamed stack (see docs/usage.md, "Memory").
    backend : {'auto', 'cpu', 'cuda'}
    progress : callable(done, total), optional
        Called after each band.
    device_mem_limit : float, optional
        Bytes of GPU memory the CUDA backend may use (default: half the free device
        memory). When the whole stack fits, it stays on the device between the two passes,
        so each input byte crosses PCIe once.
    ext : str, int or (str, int), optional
        Which image HDU of FITS inputs to combine: an EXTNAME (``"CCD1"``, any case),
        ``"CCD1,2"`` or ``("CCD1", 2)`` for EXTNAME and EXTVER, or an HDU index. Matched in
        every file by name, not position; a file without it is a ``FrameReadError`` naming
        the file. Default: the first image HDU. :func:`combine_mosaic` combines them all.
    overscan, overscan_axis, overscan_model, trim, bias, dark, exposure_key, gain
        Calibrate raw frames as they are read, band by band, before the levels and the
        combine (nothing is written in between), as ``ccdproc.ccd_process`` does: overscan
        subtracted (a section such as ``"[2049:2080,:]"``, 1-based and inclusive, columns
        first, or the header keyword holding it, ``"BIASSEC"``; one value per row with
        ``overscan_axis=1``, per column with ``0``; ``overscan_model`` ``'median'``,
        ``'mean'`` or ``'poly:N'``), trimmed (``trim``: a section or ``"TRIMSEC"``), master
        ``bias`` subtracted, master ``dark`` scaled by ``exposure_key`` (frame / dark) and
        subtracted, multiplied by ``gain`` (e-/ADU, or a header keyword). See
        :class:`gpuflat.Calibration`. The result has the trimmed shape.
    mask_sources : bool
        Sky and twilight flats: mask the stars of every frame before the final combination
        (needs the ``sky`` extra, ``pip install 'gpuflat[sky]'``). A provisional master is
        combined first; each frame, scaled and divided by it, is searched for sources
        (pixels above ``source_sigma`` times the local noise over the local background, in
        8-connected regions of at least ``source_npixels`` pixels; sep's background mesh
        of 64 pixels); their masks are grown by ``source_grow`` pixels (a disk) and the
        group is combined again with every frame's own mask, ``source_iters`` times.
        ``result.masked_pixels`` says how many pixels each frame lost. See
        docs/sky-flats.md.
    source_sigma, source_grow, source_iters, source_npixels
        As above: 3 sigma, 1.5 pixels, 1 round, 2 pixels.
    saturation : float or str, optional
        A saturation level in raw ADU (before any calibration), or the header keyword that
        holds each frame's (``"SATURATE"``): pixels at or above it are masked (grown like
        sources with ``mask_sources``); ``result.saturated_fraction`` gives each frame's
        share of them.

    Returns
    -------
    CombineResult
        ``image`` and ``uncertainty`` (float32), ``count`` (survivors), ``mask`` (no
        survivor), ``scales``, the frames' ``names``, ``levels`` and ``header``;
        ``to_ccddata()`` and ``write(path, overwrite=False, compress=False)``, both with
        the provenance ``gpuflat run`` writes (``product_header()``).
    """
    config, calibration, masking = _validated(locals())
    inputs = _inputs(inputs)
    hdu = parse_one_ext(ext)
    if hdu is not None and not _all_paths(inputs):
        raise ValueError("ext selects an HDU of FITS files: every input must then be a path")
    bad_pixels = bad_pixel_mask(mask)
    chosen = get_backend(config.backend)
    with ExitStack() as stack:
        frames = open_frames(inputs, stack, hdu=hdu)
        calibrator = calibration.calibrator()
        if calibrator is not None:
            stack.callback(calibrator.close)
        return combine_frames(
            frames, config, chosen, bad_pixel_mask=bad_pixels, progress=progress,
            calibrator=calibrator, masking=masking,
        )  # fmt: skip


def _validated(arguments: dict) -> tuple[CombineConfig, Calibration, Masking]:
    """The combination's, the calibration's and the mask pass's options from a call's
    arguments (``locals()`` at the top of :func:`combine` / :func:`combine_mosaic`),
    validated once."""
    fields = {f.name for f in dataclasses.fields(CombineConfig)}
    options = {k: v for k, v in arguments.items() if k in fields}
    weights = options.get("weights")
    options["weights"] = None if weights is None else tuple(np.asarray(weights, float).ravel())
    calibration = {f.name: arguments[f.name] for f in dataclasses.fields(Calibration) if f.init}
    masking = {f.name: arguments[f.name] for f in dataclasses.fields(Masking)}
    return CombineConfig(**options), Calibration(**calibration), Masking(**masking)


def _inputs(inputs):
    """``inputs`` as ``open_frames`` takes them: glob patterns expanded (sorted), an
    ImageFileCollection's files (full paths, so that they are streamed as files), any other
    iterable (a generator) listed; a path, a CCDData, an array or a sequence of them pass as
    they are (but for their patterns). Nothing is read here."""
    if isinstance(inputs, (str, os.PathLike)):
        paths = _matches(inputs)
        return inputs if paths is None else paths
    if hasattr(inputs, "files_filtered") and hasattr(inputs, "location"):  # ccdproc's
        paths = list(inputs.files_filtered(include_path=True))
        if not paths:
            raise NoFramesError(f"inputs: the ImageFileCollection of {inputs.location} is empty")
        return paths
    if isinstance(inputs, np.ndarray) or _is_ccddata(inputs):
        return inputs
    if not isinstance(inputs, Sequence):
        if not isinstance(inputs, Iterable):
            return inputs  # open_frames says what it takes
        inputs = list(inputs)
    if not any(isinstance(p, (str, os.PathLike)) and _matches(p) is not None for p in inputs):
        return inputs
    out = []
    for p in inputs:
        paths = _matches(p) if isinstance(p, (str, os.PathLike)) else None
        out.extend([p] if paths is None else paths)
    return out


def _matches(path) -> list[str] | None:
    """The files a path with wildcards (``*``, ``?``, ``[``) matches, sorted (a
    ``NoFramesError`` when none does); None for a path without wildcards, or one that
    names an existing file (its name has brackets)."""
    text = os.fspath(path)
    if not isinstance(text, str) or not glob.has_magic(text) or os.path.exists(text):
        return None
    paths = sorted(glob.glob(os.path.expanduser(text)))
    if not paths:
        raise NoFramesError(f"inputs: no file matches {text!r}")
    return paths


def _all_paths(inputs) -> bool:
    if isinstance(inputs, (str, os.PathLike)):
        return True
    return isinstance(inputs, Sequence) and all(isinstance(p, (str, os.PathLike)) for p in inputs)


def combine_mosaic(
    paths: Sequence[str | os.PathLike],
    *,
    ext: str | Sequence[str | tuple[str, int]] | None = None,
    scale_per: str = "extension",
    method: str = "average",
    scale: str | Sequence[float] | Callable | None = "median",
    clip: str = "sigma",
    sigma_low: float = 5.0,
    sigma_high: float = 5.0,
    center: str = "median",
    dev: str = "mad_std",
    maxiters: int | None = 1,
    min_value: float | None = None,
    max_value: float | None = None,
    nlow: int = 0,
    nhigh: int = 0,
    weights: Sequence[float] | None = None,
    rdnoise: float | str = 0.0,
    noise_gain: float | str = 1.0,
    snoise: float | str = 0.0,
    nkeep: int = 0,
    pclip: float | None = None,
    grow: float = 0.0,
    mask=None,
    mem_limit: float = 350e6,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    overscan: str | None = None,
    overscan_axis: int | None = 1,
    overscan_model: str = "median",
    trim: str | None = None,
    bias: str | os.PathLike | None = None,
    dark: str | os.PathLike | None = None,
    exposure_key: str = "EXPTIME",
    gain: float | str | None = None,
    device_mem_limit: float | None = None,
    mask_sources: bool = False,
    source_sigma: float = 3.0,
    source_grow: float = 1.5,
    source_iters: int = 1,
    source_npixels: int = 2,
    saturation: float | str | None = None,
) -> MosaicResult:
    """Combine multi-extension (mosaic) flats: every image extension on its own.

    Extensions are matched across the files by EXTNAME/EXTVER (not by position) and come
    back in the first file's order; each one's result is exactly ``combine(paths,
    ext=NAME, ...)`` when ``scale_per="extension"``. ``result.write(path, overwrite=False,
    compress=False)`` writes the one product file (layout in docs/usage.md, "Output files").

    Parameters
    ----------
    paths : sequence of path, glob or ImageFileCollection
        The FITS files, one per exposure (any iterable; wildcards and collections as in
        :func:`combine`).
    ext : str or sequence, optional
        The extensions to combine: ``"CCD1,CCD2"``, ``["CCD1", ("CCD2", 2)]``; a number
        after a name in a string is that name's EXTVER (``"CCD1,2"``). Default: all image
        extensions of the first file. A file that lacks one is a ``FrameReadError``
        naming the file and the extension.
    scale_per : {'extension', 'exposure'}
        ``'extension'``: each extension's frames are scaled by their own level.
        ``'exposure'``: one level per exposure over the finite, unmasked pixels of all its
        selected extensions together (the exact median of the union, or the mean, or the
        callable applied to the extensions concatenated into one 1-D array), which keeps
        the detectors' relative gains. It holds one exposure in memory at a time and that
        must fit ``mem_limit``. ``'none'``, ``'exptime:KEY'`` and explicit factors are per
        exposure anyway.
    mask : 2-D array, path, or mapping, optional
        A bad-pixel mask: a 2-D array or single-image file applies to every extension; a
        multi-extension file gives each extension its HDU of the same EXTNAME/EXTVER; a
        mapping from extension name to 2-D array masks those extensions only.
    progress : callable(done, total), optional
        Called after each extension.
    method, scale, clip, sigma_low, sigma_high, center, dev, maxiters, min_value, \
max_value, nlow, nhigh, weights, rdnoise, noise_gain, snoise, nkeep, pclip, grow,
mem_limit, backend, device_mem_limit
        As in :func:`combine`.
    overscan, overscan_axis, overscan_model, trim, bias, dark, exposure_key, gain
        As in :func:`combine`, per extension: a section named by a header keyword is read
        from each extension's header (or the primary's), and a multi-extension master
        gives each extension its HDU of the same EXTNAME/EXTVER (a single-image master
        applies to every extension).
    mask_sources, source_sigma, source_grow, source_iters, source_npixels, saturation
        As in :func:`combine`, extension by extension.

    Returns
    -------
    MosaicResult
        ``extensions`` maps ``"CCD1"`` (``"CCD1,2"`` for EXTVER 2) to a
        :class:`CombineResult`; ``scales``/``levels`` per exposure with
        ``scale_per='exposure'``; ``write(path, overwrite=False, compress=False)``.
    """
    config, calibration, masking = _validated(locals())
    specs = parse_ext_list(ext)
    check_scale_per(scale_per)
    paths = _inputs(paths)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not _all_paths(paths):
        raise TypeError("paths must be a sequence of FITS file paths")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__}")
    masks = mosaic_mask(mask)
    return combine_mosaic_files(
        list(paths), config, get_backend(config.backend), ext=specs, scale_per=scale_per,
        mask=masks, progress=progress, calibration=calibration, masking=masking,
    )  # fmt: skip
