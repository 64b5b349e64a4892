"""Multi-extension (mosaic) flats: every image extension combined on its own.

Survey cameras write one file per exposure with one image extension per detector or
amplifier. The extensions are matched across files by (EXTNAME, EXTVER), never by position,
combined one after the other by the same band pipeline as single images (so an extension's
result is exactly ``gpuflat.combine(paths, ext=NAME)``), and written into one product that
keeps the first file's extension order (:func:`gpuflat._products.write_mef_product`).

Scaling is per extension by default. ``scale_per="exposure"`` measures one level per
exposure over the finite, unmasked pixels of all its selected extensions together (the exact
median of their union, the two middle values averaged in float64, or the mean), so that the
detectors keep their relative gains, as a mosaic flat needs. It holds one exposure (all its
selected extensions, 4 bytes a pixel, 6 with a bad-pixel mask) in memory at a time, and that
must fit ``mem_limit``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._config import CombineConfig
from ._extensions import (
    image_extensions,
    match_extensions,
    parse_one_ext,
)
from ._frames import FitsFile, bad_pixel_mask, ext_label
from ._pipeline import CombineResult, combine_frames
from ._products import product_header, write_mef_product
from ._version import __version__
from .errors import (
    BadLevelError,
    FrameReadError,
    GpuflatError,
    NoFramesError,
    ShapeMismatchError,
)

# --------------------------------------------------------------------------------------------
# Combining
# --------------------------------------------------------------------------------------------


@dataclass
class MosaicResult:
    """The combined extensions of a mosaic, in the first file's order.

    ``extensions`` maps a label (``"CCD1"``, or ``"CCD1,2"`` for EXTVER 2) to that
    extension's :class:`~gpuflat.CombineResult`; ``scales`` and ``levels`` are the
    per-exposure factors and levels when ``scale_per == "exposure"`` (else None).
    """

    extensions: dict[str, CombineResult]
    keys: list[tuple[str, int]]
    names: list[str]
    scale_per: str
    scales: np.ndarray | None
    levels: list[float] | None
    primary_header: fits.Header = field(repr=False)
    config: CombineConfig = field(repr=False)
    backend: str = "cpu"
    #: the calibration applied (:meth:`gpuflat.Calibration.describe`; empty for none)
    calibration: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, label: str) -> CombineResult:
        return self.extensions[label]

    def params(self) -> dict:
        """The parameters recorded in the product headers."""
        return {
            **self.config.describe(),
            "scale_per": self.scale_per,
            "ext": ",".join(self.extensions),
            **self.calibration,
        }

    @classmethod
    def merge(cls, parts) -> MosaicResult:
        """One result from the results of disjoint sets of extensions of the same files
        (each extension combined on its own, e.g. on different Dask workers), in order."""
        first = parts[0]
        if any(part.names != first.names for part in parts):
            raise GpuflatError("the extensions of a mosaic were combined from different files")
        extensions = {label: r for part in parts for label, r in part.extensions.items()}
        keys = [key for part in parts for key in part.keys]
        return dataclasses.replace(first, extensions=extensions, keys=keys)

    def write(self, path, *, overwrite: bool = False, compress: bool = False) -> Path:
        """Write the mosaic product (layout: :func:`gpuflat._products.write_mef_product`).

        Never clobbers an existing file unless ``overwrite``; ``compress`` tile-compresses
        every image HDU losslessly."""
        return self._write(path, overwrite=overwrite, compress=compress)

    def _write(self, path, *, overwrite, compress, product_header=product_header, defer=False):
        params = self.params()
        primary = product_header(
            self.primary_header, names=self.names, scales=self.scales, params=params,
            backend=self.backend, version=__version__,
        )  # fmt: skip
        first = next(iter(self.extensions.values()))
        exts = [
            (
                key,
                result,
                product_header(
                    result.header,
                    names=result.names,
                    scales=result.scales,
                    params={**params, **(result.masking or {})},
                    backend=result.backend,
                    version=__version__,
                    masked=result.masked_pixels,
                ),
            )
            for key, result in zip(self.keys, self.extensions.values(), strict=True)
        ]
        return write_mef_product(
            Path(path), primary, exts, unit=first.unit, overwrite=overwrite, compress=compress,
            defer=defer,
        )  # fmt: skip


def combine_mosaic_files(
    paths,
    config: CombineConfig,
    backend,
    *,
    ext=None,
    scale_per="extension",
    mask=None,
    extension_lists=None,
    want_levels=(),
    progress=None,
    on_extension=None,
    calibration=None,
    masking=None,
) -> MosaicResult:
    """Combine the matched image extensions of ``paths`` one after the other.

    ``ext``: parsed specs (:func:`parse_ext_list`) or None for every extension; ``mask``:
    None, a 2-D array applied to every extension, or a mapping label -> 2-D array (an
    extension missing from it gets none); ``extension_lists``: the files' extensions when
    already known (the CLI has read them while selecting); ``progress(done, total)`` is
    called after each extension, ``on_extension(label)`` before it; ``calibration``: a
    :class:`gpuflat.Calibration` applied to every extension's frames (each extension with
    calibrators of its own: its masters' HDUs, its sections); ``masking``: a
    :class:`gpuflat._sources.Masking`, the mask pass of every extension's combination.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise NoFramesError("no frames to combine: the input is empty")
    if extension_lists is None:
        extension_lists = [image_extensions(p) for p in paths]
    plan = match_extensions(paths, extension_lists, ext)
    labels = [ext_label(key) for key, _, _ in plan]
    masks = {label: _mask_for(mask, label) for label in labels}
    scales = levels = None
    ext_config = config
    results = {}
    calibrate = calibration is not None and calibration.active
    with ExitStack() as stack:
        files = [stack.enter_context(closing(FitsFile(p))) for p in paths]  # once per pass
        if scale_per == "exposure" and (
            callable(config.scale) or config.scale in ("median", "mean")
        ):
            calibrators = None
            if calibrate:
                calibrators = [calibration.calibrator() for _ in plan]
                for c in calibrators:
                    stack.callback(c.close)
            levels, scales = _exposure_scales(
                files, plan, labels, masks, config, backend, calibrators
            )
            ext_config = dataclasses.replace(config, scale=tuple(scales))
        for done, ((_key, indices, _shape), label) in enumerate(zip(plan, labels, strict=True)):
            if on_extension is not None:
                on_extension(label)
            frames = [file.frame(index) for file, index in zip(files, indices, strict=True)]
            calibrator = calibration.calibrator() if calibrate else None
            try:
                result = combine_frames(
                    frames, ext_config, backend, bad_pixel_mask=masks[label],
                    want_levels=want_levels, calibrator=calibrator, masking=masking,
                )  # fmt: skip
            finally:
                if calibrator is not None:
                    calibrator.close()
            if levels is not None:
                result.levels = {"exposure": list(levels), **result.levels}
            results[label] = result
            if progress is not None:
                progress(done + 1, len(plan))
        primary_header = files[0].hdul[0].header.copy()
    first = next(iter(results.values()))
    return MosaicResult(
        extensions=results,
        keys=[key for key, _, _ in plan],
        names=[str(p) for p in paths],
        scale_per=scale_per,
        scales=scales,
        levels=levels,
        primary_header=primary_header,
        config=config,
        backend=first.backend,
        calibration=calibration.describe() if calibrate else {},
    )


def _mask_for(mask, label):
    if mask is None:
        return None
    if isinstance(mask, Mapping):
        return mask.get(label)
    return mask


def _exposure_scales(files, plan, labels, masks, config, backend, calibrators=None):
    """One level per exposure over the union of its selected extensions (see the module
    docstring); returns (levels, scales = 1/level, or the callable's factor).
    ``calibrators``: one per extension, the exposures' extensions then read calibrated."""

    def frame(i, k):
        f = files[i].frame(plan[k][1][i])
        return f if calibrators is None else calibrators[k].wrap(f)

    shapes = [shape for _, _, shape in plan]
    calib_bytes = 0
    if calibrators is not None:  # the calibrated (trimmed) shapes; one chunk of 64 rows
        shapes = [frame(0, k).shape for k in range(len(plan))]
        for c in calibrators:
            c.rows = 64
            per_row, fixed = c.memory()
            calib_bytes = max(calib_bytes, 64 * per_row + fixed)
    sizes = [shape[0] * shape[1] for shape in shapes]
    total = sum(sizes)
    masked = any(m is not None for m in masks.values())
    # float32 union; its mask and a bool copy; a calibrator's buffers
    need = total * (4 + (2 if masked else 0)) + calib_bytes
    if need > config.mem_limit:
        raise ValueError(
            f"mem_limit={config.mem_limit:.4g} bytes is too small for scale_per='exposure': "
            f"one exposure of {len(plan)} extension(s) needs {need:.4g} bytes in memory"
        )
    union = np.empty(total, np.float32)
    union_mask = np.zeros(total, np.uint8) if masked else None
    levels, scales = [], []
    for i, file in enumerate(files):
        path = file.name
        offset = 0
        for k, (label, size, shape) in enumerate(zip(labels, sizes, shapes, strict=True)):
            f = frame(i, k)
            if f.shape != shape:
                raise ShapeMismatchError(
                    f"{path}: extension {label} is {f.shape[0]}x{f.shape[1]} calibrated, "
                    f"in {files[0].name} it is {shape[0]}x{shape[1]}"
                )
            f.read_rows(0, shape[0], union[offset : offset + size].reshape(shape))
            m = masks[label]  # a FitsFrame has no mask of its own
            if masked:
                if m is not None and m.shape != shape:
                    raise ShapeMismatchError(
                        f"bad-pixel mask shape {m.shape} differs from extension {label}'s {shape}"
                    )
                union_mask[offset : offset + size] = 0 if m is None else m.ravel()
            offset += size
        if callable(config.scale):
            value, what = config.scale(union), "scale"
        else:
            value = backend.frame_level(
                union.reshape(1, total),
                None if union_mask is None else union_mask.reshape(1, total),
                config.scale,
            )
            what = f"{config.scale} level of the exposure"
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BadLevelError(f"{path}: {what} {value!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise BadLevelError(f"{path}: {what} is {value!r}; it must be finite and > 0 to scale")
        levels.append(value)
        scales.append(value if callable(config.scale) else 1.0 / value)
    return levels, np.asarray(scales, np.float64)


def mosaic_mask(mask):
    """A bad-pixel mask for a mosaic: None; a 2-D array (every extension); a mapping
    label -> 2-D array; or a FITS path: a single image applies to every extension, a
    multi-extension file gives each extension the mask HDU of the same (EXTNAME, EXTVER)."""
    if mask is None:
        return None
    if isinstance(mask, Mapping):
        out = {}
        for k, v in mask.items():
            if not isinstance(k, str):
                raise TypeError(f"mask: a mapping's keys must be extension names, got {k!r}")
            out[ext_label(parse_one_ext(k, param="mask"))] = bad_pixel_mask(v)
        return out
    if isinstance(mask, (str, os.PathLike)):
        try:
            available = image_extensions(mask)
        except FrameReadError:
            available = ()
        if len(available) > 1:
            out = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(mask, memmap=False) as hdul:
                    for key, index, _ in available:
                        out[ext_label(key)] = np.asarray(hdul[index].data) != 0
            return _MaskByExtension(out, str(mask))
    return bad_pixel_mask(mask)


class _MaskByExtension(dict):
    """Per-extension masks read from a multi-extension FITS file: an extension that the
    mask file lacks is an error (rather than silently unmasked)."""

    def __init__(self, masks, name):
        super().__init__(masks)
        self.name = name

    def get(self, label, default=None):
        if label not in self:
            raise FrameReadError(f"{self.name}: the mask file has no extension {label}")
        return self[label]


__all__ = ["MosaicResult", "combine_mosaic_files", "mosaic_mask"]
