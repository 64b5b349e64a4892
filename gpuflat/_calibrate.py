"""Raw frames calibrated inside the stream: overscan, trim, master bias, master dark scaled
by exposure time, gain. Applied band by band as the frames are read, before the levels and
the combine; nothing is written in between.

Per pixel, in float64, in ``ccdproc.ccd_process``'s order (its ``gain_corrected=False``)::

    out = (((raw - overscan) [trimmed] - bias) - dark * t_frame / t_dark) * gain

- ``overscan``: one value per row (``overscan_axis=1``, ccdproc's default) or per column
  (``0``) of the overscan strip: its median or mean, or a polynomial of degree N fitted
  by least squares to the medians along the strip (``ccdproc.subtract_overscan`` with
  ``median``, ``model=Polynomial1D(N)``). A per-row median or mean needs only that row's
  strip and is taken in the band; a per-column one, or a polynomial, needs the whole strip:
  it is read and fitted once per frame, at its first read, and the 1-D correction kept.
- sections are FITS-style (1-based, inclusive, columns first: ``[1:2048,:]``), given as
  such or named by a header keyword of every frame (``BIASSEC``, ``TRIMSEC``, ``DATASEC``).
- the masters have the trimmed shape and are read in bands too, each band once for all
  the frames of a combination; a multi-extension master gives each extension its HDU of the
  same EXTNAME/EXTVER. Their own uncertainty (an ``UNCERT`` plane) is ignored, as is their
  mask: the product's uncertainty is the spread of the calibrated frames.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ._frames import FitsFile, ext_key, ext_label, is_image_hdu
from ._sections import (
    KEYWORD,
    SECTION_KEYS,
    Section,
    parse_gain,
    parse_section,
    section_or_keyword,
)
from .errors import CalibrationError, FrameReadError


@dataclass(frozen=True)
class Calibration:
    """How raw frames are calibrated before they are combined (see the module docstring);
    validated once. The default calibrates nothing.

    Parameters
    ----------
    overscan : str, optional
        The overscan strip: a section (``"[2049:2080,:]"``) or the header keyword of every
        frame holding one (``"BIASSEC"``).
    overscan_axis : {1, 0, None}
        1: one value per row (the strip spans every row); 0: one per column (the strip
        spans every column); None: along the strip's shorter side (ccdproc's rule).
    overscan_model : {'median', 'mean', 'poly:N'}
        The value of each line of the strip, or a degree-N polynomial fitted to the medians.
    trim : str, optional
        The part kept: a section or a header keyword (``"TRIMSEC"``, ``"DATASEC"``).
    bias, dark : path, optional
        Master bias and master dark, of the trimmed shape, in the frames' units (ADU).
    exposure_key : str
        The header keyword of the exposure time (frames and dark), default ``EXPTIME``.
    gain : float or str, optional
        Multiply by this gain (e-/ADU), or by each frame's value of this header keyword.
    """

    overscan: str | None = None
    overscan_axis: int | None = 1
    overscan_model: str = "median"
    trim: str | None = None
    bias: str | None = None
    dark: str | None = None
    exposure_key: str = "EXPTIME"
    gain: float | str | None = None
    # parsed: a Section or a header keyword
    _overscan: Section | str | None = field(init=False, repr=False, compare=False)
    _trim: Section | str | None = field(init=False, repr=False, compare=False)
    _degree: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        setattr_ = object.__setattr__
        setattr_(self, "_overscan", section_or_keyword(self.overscan, "overscan"))
        setattr_(self, "_trim", section_or_keyword(self.trim, "trim"))
        axis = self.overscan_axis
        if axis is not None and (isinstance(axis, bool) or axis not in (0, 1)):
            raise ValueError(
                f"overscan_axis must be 0, 1 or None (the strip's shorter side); got {axis!r}"
            )
        model = self.overscan_model
        degree = None
        if not isinstance(model, str):
            raise TypeError(f"overscan_model must be a string, got {type(model).__name__}")
        if model not in ("median", "mean"):
            word, _, n = model.partition(":")
            if word != "poly" or not n.strip().isdigit() or int(n) > 9:
                raise ValueError(
                    "overscan_model must be 'median', 'mean' or 'poly:N' (a polynomial of "
                    f"degree N <= 9 fitted to the medians along the strip); got {model!r}"
                )
            degree = int(n)
        setattr_(self, "_degree", degree)
        for name in ("bias", "dark"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise TypeError(f"{name} must be a FITS file path, got {type(value).__name__}")
                setattr_(self, name, os.fspath(value))
        if not isinstance(self.exposure_key, str) or not KEYWORD.fullmatch(
            self.exposure_key.strip().upper()
        ):
            raise ValueError(f"exposure_key must be a header keyword, got {self.exposure_key!r}")
        setattr_(self, "exposure_key", self.exposure_key.strip().upper())
        setattr_(self, "gain", parse_gain(self.gain))

    @property
    def active(self) -> bool:
        """Whether anything is calibrated at all."""
        return any(
            v is not None for v in (self.overscan, self.trim, self.bias, self.dark, self.gain)
        )

    def describe(self) -> dict:
        """The options in effect, for provenance (empty when nothing is calibrated)."""
        if not self.active:
            return {}
        out = {}
        if self.overscan is not None:
            out["overscan"] = _text(self._overscan)
            out["overscan_axis"] = "auto" if self.overscan_axis is None else self.overscan_axis
            out["overscan_model"] = self.overscan_model
        if self.trim is not None:
            out["trim"] = _text(self._trim)
        for name in ("bias", "dark"):
            if getattr(self, name) is not None:
                out[name] = os.path.basename(getattr(self, name))[-60:]
        if self.dark is not None:
            out["exposure_key"] = self.exposure_key
        if self.gain is not None:
            out["gain"] = self.gain
        return out

    def calibrator(self) -> Calibrator | None:
        """A fresh :class:`Calibrator` for one combination, or None when nothing is done."""
        return Calibrator(self) if self.active else None


def _text(spec):
    return spec.text if isinstance(spec, Section) else spec


class Calibrator:
    """The calibration of one combination (a group, or one extension of a mosaic group): the
    masters, opened at the first frame, and the band buffers, shared by the frames it wraps
    and used by one reader thread at a time. ``rows`` is the chunk height, set by the
    pipeline to its band height, so that each band of a master is read once for all frames.
    """

    def __init__(self, calibration: Calibration):
        self.cal = calibration
        self.rows = None
        self._masters = None  # (bias frame or None, dark frame or None, dark exposure)
        self._files = []
        self._key = None
        self._bufs = {}
        self._raw_cols = 0
        self._strip_cols = 0
        self._fixed = 0
        self._strip = 0
        self._cols = 0

    # ---- wrapping --------------------------------------------------------------------------

    def wrap(self, frame) -> CalibratedFrame:
        """``frame`` calibrated: its sections resolved from the options or its header, its
        masters' shapes, exposure time and gain checked (errors name the files)."""
        cal = self.cal
        shape = frame.shape
        trim = self._box(cal._trim, frame, "trim")
        tr0, tr1, tc0, tc1 = trim if trim is not None else (0, shape[0], 0, shape[1])
        out_shape = (tr1 - tr0, tc1 - tc0)
        oscan = None
        if cal._overscan is not None:
            box = self._box(cal._overscan, frame, "overscan")
            r0, r1, c0, c1 = box
            axis = cal.overscan_axis
            if axis is None:
                axis = 0 if (c1 - c0) > (r1 - r0) else 1
            spans = (r0, r1) == (0, shape[0]) if axis == 1 else (c0, c1) == (0, shape[1])
            if not spans:
                line, what = ("row", "rows") if axis == 1 else ("column", "columns")
                raise CalibrationError(
                    f"{frame.name}: overscan {_text(cal._overscan)} does not span every {line} "
                    f"of the frame, which overscan_axis={axis} (one value per {line}) needs "
                    f"({what} 1-{shape[0] if axis == 1 else shape[1]})"
                )
            oscan = (axis, box)
            if axis == 0:  # the strip read whole (and its median's copy)
                self._strip = max(self._strip, (r1 - r0) * shape[1] * 16)
            else:
                self._strip_cols = max(self._strip_cols, c1 - c0)
            if axis == 0 or cal._degree is not None:  # each frame's 1-D correction, kept
                self._fixed += 8 * (shape[1] if axis == 0 else shape[0])
        bias, dark, dark_time = self._open_masters(frame)
        for what, master in (("bias", bias), ("dark", dark)):
            if master is not None and master.shape != out_shape:
                raise CalibrationError(
                    f"{frame.name}: calibrated shape {out_shape[0]}x{out_shape[1]} differs from "
                    f"the master {what} {master.name}: {master.shape[0]}x{master.shape[1]}"
                )
        ratio = None
        if dark is not None:
            ratio = _number(frame, cal.exposure_key, "exposure time", f"scale the dark {dark.name}")
            ratio = ratio / dark_time
        gain = cal.gain
        if isinstance(gain, str):
            gain = _number(frame, gain, "gain", "apply the gain")
            if not gain > 0:
                raise CalibrationError(f"{frame.name}: gain {cal.gain} = {gain}; it must be > 0")
        self._raw_cols = max(self._raw_cols, shape[1])
        self._cols = out_shape[1]
        return CalibratedFrame(frame, self, trim=(tr0, tr1, tc0, tc1), oscan=oscan, ratio=ratio,
                               gain=gain)  # fmt: skip

    def _box(self, spec, frame, what):
        if spec is None:
            return None
        if isinstance(spec, str):
            text = frame.header.get(spec)
            if text is None:
                raise CalibrationError(
                    f"{frame.name}: no {spec} keyword in the header, needed for the {what} section"
                )
            try:
                spec = parse_section(str(text), f"{spec} =")
            except ValueError as exc:
                raise CalibrationError(f"{frame.name}: {exc}") from None
        return spec.box(frame.shape, f"{what} section", frame.name)

    def _open_masters(self, frame):
        if self._masters is None:
            cal = self.cal
            bias = None if cal.bias is None else self._open(cal.bias, frame)
            dark = dark_time = None
            if cal.dark is not None:
                dark = self._open(cal.dark, frame)
                dark_time = _number(dark, cal.exposure_key, "exposure time", "scale it")
                if not dark_time > 0:
                    raise CalibrationError(
                        f"{dark.name}: {cal.exposure_key} = {dark_time}; a master dark's "
                        "exposure time must be > 0 to scale it"
                    )
            self._masters = (bias, dark, dark_time)
        return self._masters

    def _open(self, path, frame):
        """The master's image HDU for ``frame``: its only image, or the one of the same
        (EXTNAME, EXTVER) in a multi-extension master."""
        file = FitsFile(path)
        self._files.append(file)
        images = [i for i, h in enumerate(file.hdul) if is_image_hdu(h)]
        if not images:
            raise FrameReadError(f"{path}: no image HDU")
        if len(images) == 1:
            return file.frame(images[0])
        name = str(frame.header.get("EXTNAME", "")).strip().upper()
        ver = frame.header.get("EXTVER", 1)
        found = [i for i in images if ext_key(file.hdul[i], i) == (name, ver)]
        if not name or not found:
            want = f"extension {ext_label((name, ver))}" if name else "a single image"
            raise CalibrationError(
                f"{path}: a multi-extension master with no {want} for {frame.name}"
            )
        return file.frame(found[0])

    def close(self):
        for f in self._files:
            f.close()
        self._files = []
        self._bufs = {}

    # ---- memory ------------------------------------------------------------------------------

    def memory(self) -> tuple[int, int]:
        """(bytes per band row, fixed bytes) of the buffers, once the frames are wrapped:
        per row, the float64 work row of the raw frame and its raw bytes being converted
        (8 + 8 bytes a raw column), the median's copy of the overscan strip, the master bias
        and dark rows kept for the band, the scaled dark and a master's raw bytes (8 bytes a
        trimmed column each); fixed, a per-column overscan strip read whole (and its
        median's copy) and the 1-D correction of every frame that needs the whole strip."""
        bias, dark, _ = self._masters or (None, None, None)
        masters = (bias is not None) + 2 * (dark is not None)
        per_row = 16 * self._raw_cols + 8 * self._strip_cols + 8 * self._cols * (masters + 1)
        return per_row, self._fixed + self._strip

    def buffer(self, name, rows, cols) -> np.ndarray:
        """A float64 (rows, cols) work array, reused."""
        buf = self._bufs.get(name)
        if buf is None or buf.size < rows * cols:
            buf = self._bufs[name] = np.empty(rows * cols)
        return buf[: rows * cols].reshape(rows, cols)

    def master_rows(self, r0, r1):
        """Rows [r0, r1) of the master bias and dark (None where there is none), read once
        for all the frames that ask for the same rows in turn."""
        bias, dark, _ = self._masters
        if self._key != (r0, r1):
            self._key = None
            for name, m in (("bias", bias), ("dark", dark)):
                if m is not None:
                    m.read_rows(r0, r1, self.buffer(name, r1 - r0, m.shape[1]))
            self._key = (r0, r1)
        return tuple(
            None if m is None else self.buffer(name, r1 - r0, m.shape[1])
            for name, m in (("bias", bias), ("dark", dark))
        )


def _number(frame, key, what, why) -> float:
    value = frame.header.get(key)
    if value is None:
        raise CalibrationError(f"{frame.name}: no {key} keyword in the header, needed to {why}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(
            f"{frame.name}: {key} = {value!r} is not a number ({what})"
        ) from None
    if not math.isfinite(value):
        raise CalibrationError(f"{frame.name}: {key} = {value!r} is not finite ({what})")
    return value


class CalibratedFrame:
    """A frame read calibrated: ``read_rows(r0, r1, out)`` reads the raw rows the trimmed
    rows map to, in chunks of the calibrator's ``rows``, and calibrates them in float64.
    ``shape`` is the trimmed shape; the raw frame is closed by its owner."""

    def __init__(self, raw, calibrator, *, trim, oscan, ratio, gain):
        self.raw = raw
        self.name = raw.name
        self._cal = calibrator
        self._trim = trim
        self._oscan = oscan
        self._ratio = ratio
        self._gain = gain
        self._correction = None  # a whole strip's 1-D overscan correction, once computed
        tr0, tr1, tc0, tc1 = trim
        self.shape = (tr1 - tr0, tc1 - tc0)
        self.mask = None if raw.mask is None else raw.mask[tr0:tr1, tc0:tc1]
        header = raw.header.copy()
        for key in SECTION_KEYS:  # the sections describe the raw frame, not this one
            header.remove(key, ignore_missing=True, remove_all=True)
        if gain is not None:
            header["BUNIT"] = "electron"
        self.header = header
        self.unit = "electron" if gain is not None else raw.unit

    def read_mask_rows(self, r0, r1):
        return None if self.mask is None else self.mask[r0:r1]

    def close(self):
        pass

    def read_stored_rows(self, r0, r1, out):
        """Rows [r0, r1) of the trimmed area as stored, before any calibration (raw ADU:
        what a saturation level is compared with), in chunks of the calibrator's rows."""
        tr0, _, tc0, tc1 = self._trim
        step = self._cal.rows or (r1 - r0)
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            work = self._cal.buffer("work", b - a, self.raw.shape[1])
            self.raw.read_rows(tr0 + a, tr0 + b, work)
            out[a - r0 : b - r0] = work[:, tc0:tc1]

    def read_rows(self, r0, r1, out):
        step = self._cal.rows or (r1 - r0)
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            self._chunk(a, b, out[a - r0 : b - r0])

    def _chunk(self, a, b, out):
        cal = self._cal
        tr0, _, tc0, tc1 = self._trim
        inline = self._oscan is not None and self._oscan[0] == 1 and cal.cal._degree is None
        corr = None
        if self._oscan is not None and not inline:  # before the band: it uses the buffers
            corr = self._overscan_correction()
        work = cal.buffer("work", b - a, self.raw.shape[1])
        self.raw.read_rows(tr0 + a, tr0 + b, work)
        data = work[:, tc0:tc1]
        if inline:  # a per-row median or mean, from the band's own rows
            _, (_, _, c0, c1) = self._oscan
            data -= self._line(work[:, c0:c1], 1)[:, None]
        elif corr is not None:
            data -= corr[tr0 + a : tr0 + b, None] if self._oscan[0] == 1 else corr[None, tc0:tc1]
        bias, dark = cal.master_rows(a, b)
        if bias is not None:
            data -= bias
        if dark is not None:
            scaled = cal.buffer("scaled", b - a, tc1 - tc0)
            np.multiply(dark, self._ratio, out=scaled)
            data -= scaled
        if self._gain is not None:
            data *= self._gain
        out[...] = data

    def _line(self, strip, axis) -> np.ndarray:
        """The strip's median or mean along ``axis`` (ccdproc's ``np.median``/``np.mean``)."""
        if self._cal.cal.overscan_model == "mean":
            return np.mean(strip, axis=axis)
        return np.median(strip, axis=axis)

    def _overscan_correction(self) -> np.ndarray:
        """The 1-D correction of a whole strip (per column, or a fitted polynomial): read
        once per frame, at its first read, in chunks of the calibrator's rows."""
        if self._correction is not None:
            return self._correction
        axis, (r0, r1, c0, c1) = self._oscan
        cols = self.raw.shape[1]
        if axis == 0:  # a strip of rows, whole: one value per column
            strip = self._cal.buffer("strip", r1 - r0, cols)
            self.raw.read_rows(r0, r1, strip)
            line = self._line(strip, 0)
        else:  # one value per row, from every row's strip
            line = np.empty(r1 - r0)
            step = self._cal.rows or (r1 - r0)
            for a in range(r0, r1, step):
                b = min(r1, a + step)
                work = self._cal.buffer("work", b - a, cols)
                self.raw.read_rows(a, b, work)
                line[a - r0 : b - r0] = self._line(work[:, c0:c1], 1)
        degree = self._cal.cal._degree
        if degree is not None:
            x = np.arange(line.size, dtype=np.float64)
            line = np.polynomial.Polynomial.fit(x, line, degree)(x)
        self._correction = line
        return line
