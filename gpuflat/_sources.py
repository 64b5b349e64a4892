"""The mask pass of a combination: per-frame masks of the sources (stars) and of the
saturated pixels, for sky and twilight flats.

The recipe of ORAC-DR's SKY_FLAT_MASKED, IRAF's mkskyflat and sofia_redux's mkflat: a
provisional master (the plain combination); each frame scaled by its factor and divided by
it, which leaves a ratio image of about 1 where the sky is and the stars on top; sources
detected on that ratio, pixels above ``source_sigma`` times the local noise over the local
background in connected regions of at least ``source_npixels`` pixels; their masks grown by
``source_grow`` pixels (a disk); then the group is combined again, every frame with its own
mask (:func:`gpuflat._pipeline.combine_frames` orchestrates; ``source_iters`` rounds).

Detection: sep (SExtractor's background estimation as a library) gives the local
background and the local noise: a mesh of ``BOX`` pixels, each mesh's sigma-clipped mode
and RMS, median-filtered over 3 x 3 meshes and interpolated by a bicubic spline; a pixel
above ``source_sigma`` times that noise over that background is a source pixel, and
scipy's ``ndimage.label`` keeps the 8-connected regions of ``source_npixels`` pixels or
more (only the footprints count: no filtering, no deblending). sep rather than photutils'
Background2D: the same estimate in C, about 10x faster per frame and a 0.06 s import
instead of 2.4 s; scipy's labelling rather than sep's extraction, which computes some 30
properties of every object that the masks do not need (130-400 ms a 1024^2 frame with a
thousand stars, against 20 ms). That is what keeps a masked run near a plain one.

Saturated pixels (``saturation``: a level in raw ADU, or the header keyword holding each
frame's level, e.g. ``SATURATE``) are compared with the frame's values as stored, before any
calibration, and are masked whether or not sources are; with source masks they are grown
like sources (a saturated star's bleed and halo).

Memory: the pass reads each frame in row bands with halo rows above and below (the
background mesh and the grow need them; bands start on mesh rows, so the meshes inside a
band are the whole frame's), one frame at a time, and keeps the masks packed, one bit a
pixel (:class:`FrameMasks`); both under ``mem_limit``. A frame is read once when it fits in
one band, else ``(band + 2 halo) / band`` times.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from dataclasses import dataclass

import numpy as np

from ._stream import frame_mask
from .errors import GpuflatError, MissingDependencyError

#: background mesh of the detection, pixels (a multiple of 8)
BOX = 64
#: bytes per pixel of a band of the mask pass: the frame's rows (float32; and the stored
#: rows of a calibrated frame with a saturation level), the background and its noise
#: (float32 each), the labels (int32), the masks and the grow's rows (bool)
BYTES_PER_PIXEL = 32


@dataclass(frozen=True)
class Masking:
    """The options of the mask pass, validated once (see :func:`gpuflat.combine`)."""

    mask_sources: bool = False
    source_sigma: float = 3.0
    source_grow: float = 1.5
    source_iters: int = 1
    source_npixels: int = 2
    saturation: float | str | None = None

    def __post_init__(self):
        if not isinstance(self.mask_sources, bool):
            raise TypeError(f"mask_sources must be True or False, got {self.mask_sources!r}")
        _positive("source_sigma", self.source_sigma)
        _positive("source_grow", self.source_grow, zero=True)
        if self.source_grow > BOX:
            raise ValueError(f"source_grow must be at most {BOX} pixels, got {self.source_grow!r}")
        for name, low in (("source_iters", 1), ("source_npixels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        sat = self.saturation
        if isinstance(sat, str):
            key = sat.strip().upper()
            try:
                object.__setattr__(self, "saturation", _positive("saturation", float(key)))
            except ValueError:
                if not key or len(key) > 8 or not key.replace("-", "").replace("_", "").isalnum():
                    raise ValueError(
                        f"saturation must be a level (raw ADU) or a header keyword, got {sat!r}"
                    ) from None
                object.__setattr__(self, "saturation", key)
        elif sat is not None:
            object.__setattr__(self, "saturation", _positive("saturation", sat))
        missing = [m for m in ("sep", "scipy") if importlib.util.find_spec(m) is None]
        if self.mask_sources and missing:
            raise MissingDependencyError(
                f"mask_sources (--mask-sources) needs the {' and '.join(map(repr, missing))} "
                "package, not installed here: pip install 'gpuflat[sky]'"
            )

    @property
    def active(self) -> bool:
        """Whether a mask pass runs at all."""
        return self.mask_sources or self.saturation is not None

    def describe(self) -> dict:
        """The options that apply, for provenance (empty when no mask pass runs)."""
        out = {}
        if self.mask_sources:
            out = {
                "mask_sources": True, "source_sigma": float(self.source_sigma),
                "source_grow": float(self.source_grow), "source_iters": self.source_iters,
                "source_npixels": self.source_npixels,
            }  # fmt: skip
        if self.saturation is not None:
            out["saturation"] = self.saturation
        return out


def _positive(name, value, *, zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)


class FrameMasks:
    """Every frame's mask from the mask pass, one bit a pixel, and how many pixels of each
    it masks (``masked``) and of those how many are saturated (``saturated``)."""

    def __init__(self, n, shape):
        self.shape = tuple(shape)
        self.packed = np.zeros((n, shape[0], -(-shape[1] // 8)), np.uint8)
        self.masked = np.zeros(n, np.int64)
        self.saturated = np.zeros(n, np.int64)

    @staticmethod
    def nbytes_for(n, shape) -> int:
        return n * shape[0] * -(-shape[1] // 8)

    def rows(self, i, r0, r1) -> np.ndarray:
        """Frame ``i``'s mask of rows [r0, r1), boolean."""
        bits = np.unpackbits(self.packed[i, r0:r1], axis=1, count=self.shape[1])
        return bits.view(bool)

    def mask(self, i) -> np.ndarray:
        """Frame ``i``'s whole mask, boolean."""
        return self.rows(i, 0, self.shape[0])

    def store(self, i, r0, found, saturated) -> None:
        self.packed[i, r0 : r0 + found.shape[0]] = np.packbits(found, axis=1)
        self.masked[i] += int(np.count_nonzero(found))
        if saturated is not None:
            self.saturated[i] += int(np.count_nonzero(saturated))


class MaskedFrame:
    """A frame whose mask rows include its mask from the mask pass; everything else is the
    frame's own."""

    def __init__(self, frame, masks: FrameMasks, index: int):
        self._frame = frame
        self._masks = masks
        self._index = index
        self.mask = True  # the pipeline's "this frame has a mask"

    def __getattr__(self, name):
        return getattr(self._frame, name)

    def read_mask_rows(self, r0, r1):
        own = self._frame.read_mask_rows(r0, r1)
        mine = self._masks.rows(self._index, r0, r1)
        return mine if own is None else (mine | own)


def masked_frames(frames, masks):
    """``frames`` with their masks from the pass (as they are when ``masks`` is None)."""
    if masks is None:
        return list(frames)
    return [MaskedFrame(f, masks, i) for i, f in enumerate(frames)]


def saturation_levels(frames, saturation) -> list[float] | None:
    """Every frame's saturation level (raw ADU): the number given, or its header's value of
    the keyword given (a frame without a valid one is a ``GpuflatError`` naming it)."""
    if saturation is None:
        return None
    if not isinstance(saturation, str):
        return [float(saturation)] * len(frames)
    out = []
    for f in frames:
        value = f.header.get(saturation)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            got = "no such keyword" if value is None else f"{saturation} = {value!r}"
            raise GpuflatError(
                f"{f.name}: --saturation {saturation}: {got}; a positive level is needed"
            )
        out.append(float(value))
    return out


def plan(n, shape, *, mem_limit, grow, extra=(0, 0)) -> tuple[int, int]:
    """(band rows, halo rows) of the mask pass under ``mem_limit``: the packed masks of
    every frame, and per band row ``BYTES_PER_PIXEL`` a pixel plus ``extra`` (a
    calibrator's (bytes per row, fixed bytes))."""
    nrows, cols = shape
    halo = BOX * math.ceil((2 * BOX + math.ceil(grow) + 1) / BOX)
    per_row = cols * BYTES_PER_PIXEL + extra[0]
    room = mem_limit - FrameMasks.nbytes_for(n, shape) - extra[1]
    if room >= nrows * per_row:
        return nrows, 0
    rows = int(room // per_row) - 2 * halo
    rows -= rows % BOX
    if rows < BOX:
        need = FrameMasks.nbytes_for(n, shape) + extra[1] + (BOX + 2 * halo) * per_row
        raise ValueError(
            f"mem_limit={mem_limit:.4g} bytes is too small to mask {n} frames of "
            f"{nrows}x{cols}: at least {need:.4g} bytes are needed"
        )
    return rows, halo


def mask_pass(frames, masking: Masking, *, master, scales, levels, bad_pixel_mask, mem_limit,
              calibrator=None, extra=(0, 0)) -> FrameMasks:  # fmt: skip
    """Every frame's mask: its saturated pixels (``levels``: per-frame saturation levels,
    or None) and, when ``masking.mask_sources``, its sources on ``frame x scale / master``
    (``master``: the provisional master, whole), grown. Each frame is read band by band
    (:func:`plan`), one frame after the other."""
    n = len(frames)
    shape = nrows, cols = frames[0].shape
    sep = _sep() if masking.mask_sources else None  # and scipy's ndimage
    rows, halo = plan(n, shape, mem_limit=mem_limit, grow=masking.source_grow, extra=extra)
    masks = FrameMasks(n, shape)
    work = np.empty((min(nrows, rows + 2 * halo), cols), np.float32)
    stored = None
    if calibrator is not None:
        calibrator.rows = work.shape[0]
    for i, frame in enumerate(frames):
        for r0 in range(0, nrows, rows):
            r1 = min(nrows, r0 + rows)
            a, b = max(0, r0 - halo), min(nrows, r1 + halo)
            buf = work[: b - a]
            frame.read_rows(a, b, buf)
            saturated = None
            if levels is not None:
                read_stored = getattr(frame, "read_stored_rows", None)
                if read_stored is None:  # the values as read are the stored ones
                    saturated = buf >= levels[i]
                else:
                    if stored is None:
                        stored = np.empty_like(work)
                    read_stored(a, b, stored[: b - a])
                    saturated = stored[: b - a] >= levels[i]
            if sep is None:
                found = saturated
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    buf *= np.float32(scales[i])
                    buf /= master[a:b]
                bad = ~np.isfinite(buf)  # the frame's or the master's NaN, or 0 / 0
                own = frame_mask(frame, bad_pixel_mask, a, b)
                if own is not None:
                    bad |= own
                if saturated is not None:
                    bad |= saturated
                found = detect(sep, buf, bad, masking.source_sigma, masking.source_npixels)
                if saturated is not None:
                    found |= saturated
                found = grow(found, masking.source_grow)
            inner = slice(r0 - a, r1 - a)
            masks.store(i, r0, found[inner], None if saturated is None else saturated[inner])
    return masks


def detect(sep, ratio, bad, sigma, npixels) -> np.ndarray:
    """The pixels of the sources on ``ratio`` (float32, changed: the background is taken
    off), ``bad`` pixels left out: above ``sigma`` x the local noise over the local
    background (sep's), in 8-connected regions of at least ``npixels`` pixels (scipy's
    labelling)."""
    from scipy import ndimage

    np.copyto(ratio, np.float32(1), where=bad)
    bkg = sep.Background(ratio, mask=bad, bw=BOX, bh=BOX, fw=3, fh=3)
    bkg.subfrom(ratio)
    noise = bkg.rms()
    noise *= np.float32(sigma)
    found = ratio > noise
    del noise
    found &= ~bad
    if npixels > 1:
        labels, _ = ndimage.label(found, structure=_EIGHT)
        keep = np.bincount(labels.ravel()) >= npixels
        keep[0] = False
        found = keep[labels]
    return found


#: 8-connectivity
_EIGHT = np.ones((3, 3), bool)


def grow(mask, radius) -> np.ndarray:
    """``mask`` dilated by a disk of ``radius`` pixels (offsets dy, dx with dy^2 + dx^2 <=
    radius^2): for each row offset dy, the mask dilated along rows by the half-width
    w(dy) = floor(sqrt(radius^2 - dy^2)) (built up one w at a time), shifted by dy."""
    r = math.floor(radius)
    out = mask.copy()
    if r <= 0:
        return out
    ny, nx = mask.shape
    # dx^2 <= radius^2 - dy^2, in integers: dx^2 <= floor(radius^2) - dy^2; offsets as
    # wide as the mask reach nothing
    width = {dy: math.isqrt(math.floor(radius * radius) - dy * dy)
             for dy in range(-min(r, ny - 1), min(r, ny - 1) + 1)}  # fmt: skip
    run = mask.copy()  # the mask dilated along rows by w
    for w in range(r + 1):
        if 0 < w < nx:
            run[:, w:] |= mask[:, :-w]
            run[:, :-w] |= mask[:, w:]
        for dy in (d for d, v in width.items() if v == w):
            if dy > 0:
                out[dy:] |= run[: ny - dy]
            elif dy < 0:
                out[:dy] |= run[-dy:]
            else:
                out |= run
    return out


def _sep():
    try:
        import scipy.ndimage  # noqa: F401
        import sep
    except ImportError as exc:  # checked when the options were made; a broken install
        raise MissingDependencyError(
            f"mask_sources needs the 'sep' and 'scipy' packages ({exc}): pip install 'gpuflat[sky]'"
        ) from None
    return sep
