"""Frames in: FITS image HDUs and in-memory arrays, opened once and read by row bands;
HDU naming and matching; bad-pixel masks."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from typing import NamedTuple

import numpy as np
from astropy.io import fits

from .errors import FrameReadError, GpuflatError, NoFramesError

STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
    "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "EXTNAME",
    "EXTVER", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2",
    "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "NCOMBINE", "BUNIT",
}  # fmt: skip


class RawFormat(NamedTuple):
    """How a frame's pixels are stored: ``dtype`` (``u1`` or big-endian), BSCALE, BZERO and
    BLANK (an int, or None); ``scale_raw`` turns them into values."""

    dtype: np.dtype
    bscale: float
    bzero: float
    blank: int | None


class ArrayFrame:
    """A frame already in memory: a 2-D array, optionally with a mask and a header."""

    raw_format = None  # no stored bytes to hand over: read_rows gives the values

    def __init__(self, data, *, name, mask=None, header=None, unit=None):
        self.data = data
        self.mask = None if mask is None or not np.any(mask) else np.asarray(mask, bool)
        self.name = name
        self.header = fits.Header() if header is None else header
        self.unit = unit
        self.shape = data.shape

    def read_rows(self, r0, r1, out):
        out[...] = self.data[r0:r1]

    def read_mask_rows(self, r0, r1):
        return None if self.mask is None else self.mask[r0:r1]

    def close(self):
        pass


class FitsFile:
    """An open FITS file: its handle and parsed HDUs, shared by the frames of its image
    HDUs (a mosaic file is opened once per pass, not once per extension)."""

    def __init__(self, path):
        self.name = str(path)
        try:
            self.fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise FrameReadError(f"{path}: cannot open: {exc.strerror or exc}") from None
        try:
            if self.fh.read(2) == b"\x1f\x8b":  # gzip: decompressed once, to a temporary file
                self.fh = _gunzip(self.fh, path)
            self.fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # astropy warns on truncation: make it an error
                self.hdul = fits.open(self.fh, memmap=False, lazy_load_hdus=False)
        except GpuflatError:
            self.fh.close()
            raise
        except Exception as exc:
            self.fh.close()
            raise FrameReadError(f"{path}: not a readable FITS image ({exc})") from None
        self.size = os.fstat(self.fh.fileno()).st_size

    def frame(self, hdu=None) -> FitsFrame:
        """The frame of image HDU ``hdu`` (see :class:`FitsFrame`); it reads through this
        file, which must stay open while the frame is read."""
        return FitsFrame(self.name, hdu=hdu, file=self)

    def close(self):
        self.hdul.close()
        self.fh.close()


def _gunzip(fh, path):
    """A gzip-compressed FITS file, decompressed once into an unlinked temporary file
    (bands are then read from it as from a plain file; memory stays bounded)."""
    fd, name = tempfile.mkstemp(prefix="gpuflat-", suffix=".fits")
    try:
        with os.fdopen(fd, "wb") as out:
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh) as gz:
                shutil.copyfileobj(gz, out, 1 << 22)
        return open(name, "rb")
    except (OSError, EOFError) as exc:
        raise FrameReadError(f"{path}: cannot decompress ({exc})") from None
    finally:
        os.unlink(name)  # gone from the directory; its data live while it is open
        fh.close()


class FitsFrame:
    """One image HDU of a FITS file. The file is opened once and stays open; uncompressed
    data are read by direct positioned reads of the needed rows (no memory mapping, so the
    resident memory does not grow with the files), compressed data through astropy sections.
    ``file``: an open :class:`FitsFile` to read through (it is not closed by ``close``).

    ``raw_format`` (a :class:`RawFormat`, None for compressed data) and ``read_raw_rows``
    hand the stored bytes over as they are, for a backend that converts them itself."""

    mask = None
    raw_format = None

    def __init__(self, path, *, hdu=None, file=None):
        self.name = str(path)
        self._owned = file is None
        self._file = FitsFile(path) if file is None else file
        self._fh = self._file.fh
        self._hdul = self._file.hdul
        try:
            self._open(hdu)
        except GpuflatError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise FrameReadError(f"{path}: not a readable FITS image ({exc})") from None

    def _open(self, hdu):
        index = (
            _image_hdu_index(self._hdul, self.name)
            if hdu is None
            else resolve_hdu(self._hdul, hdu, self.name)
        )
        self._hdu = h = self._hdul[index]
        if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            raise FrameReadError(
                f"{self.name}: HDU {index!r} is a {type(h).__name__}, not an image"
            )
        header = h.header
        if h.header.get("NAXIS", 0) != 2 and not isinstance(h, fits.CompImageHDU):
            raise FrameReadError(
                f"{self.name}: HDU {index!r} is not a 2-D image (NAXIS={header.get('NAXIS')})"
            )
        # an extension (a mosaic detector, a tile-compressed image) inherits the keywords of
        # the primary header (IMAGETYP, FILTER, EXPTIME...) that it does not set itself
        self.header = header if index == 0 else merged_header(header, self._hdul[0].header)
        self.unit = header.get("BUNIT")
        if isinstance(h, fits.CompImageHDU):
            self.shape = tuple(h.shape)
            self._compressed = True
            return
        self._compressed = False
        self.shape = (header["NAXIS2"], header["NAXIS1"])
        bitpix = header["BITPIX"]
        self._raw = np.dtype(
            {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[bitpix]
        )
        self._bzero = header.get("BZERO", 0)
        self._bscale = header.get("BSCALE", 1)
        self._blank = _blank(header.get("BLANK")) if bitpix > 0 else None
        self._offset = h.fileinfo()["datLoc"]
        self.raw_format = RawFormat(self._raw, self._bscale, self._bzero, self._blank)
        _check_whole(h, self._file.size, self.name)

    def read_rows(self, r0, r1, out):
        """Read rows [r0, r1) into ``out`` (float32 or float64), applying BSCALE/BZERO/BLANK."""
        if self._compressed:
            # astropy's CompImageHDU.section decompresses only the tiles that overlap rows
            # [r0, r1) and reads only their bytes from the heap (checked with astropy 8.0: a
            # 50-row band of a 2000-row Rice file reads a fifth of the file, most of it the
            # tile table; the whole image is never decompressed at once).
            try:
                out[...] = self._hdu.section[r0:r1]
            except Exception as exc:  # corrupt or truncated tiles: name the file
                raise FrameReadError(
                    f"{self.name}: cannot decompress rows {r0}-{r1} ({exc})"
                ) from None
            return
        # a few rows at a time through this thread's reused buffer: the stored bytes are
        # converted while in cache, and no fresh memory (page faults) is taken per call
        cols = self.shape[1]
        step = max(1, _CHUNK_BYTES // (cols * self._raw.itemsize))
        buf = _chunk_buffer(min(step, r1 - r0) * cols * self._raw.itemsize)
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            raw = buf[: (b - a) * cols * self._raw.itemsize]
            self.read_raw_rows(a, b, raw)
            scale_raw(raw.view(self._raw).reshape(b - a, cols), out[a - r0 : b - r0],
                      self._bscale, self._bzero, self._blank)  # fmt: skip

    def read_raw_rows(self, r0, r1, out):
        """Read the stored bytes of rows [r0, r1) into the contiguous uint8 buffer ``out``
        (exactly their size), as they are in the file: no conversion, no copy."""
        if self._compressed:
            raise FrameReadError(f"{self.name}: compressed data have no raw rows")
        self._fh.seek(self._offset + r0 * self.shape[1] * self._raw.itemsize)
        if self._fh.readinto(out) != out.nbytes:
            raise FrameReadError(f"{self.name}: short read (file changed or truncated)")

    def read_mask_rows(self, r0, r1):
        return None

    def close(self):
        if self._owned:
            self._file.close()


_CHUNK_BYTES = 262144
_chunks = threading.local()


def _chunk_buffer(nbytes) -> np.ndarray:
    """This thread's reusable byte buffer of at least ``nbytes`` (its first ``nbytes``)."""
    buf = getattr(_chunks, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _chunks.buf = np.empty(max(nbytes, _CHUNK_BYTES), np.uint8)
    return buf[:nbytes]


def _blank(value):
    """BLANK as an int: the standard makes it one; a float with an integral value is taken
    as that integer and any other value (no stored integer equals it) as no BLANK."""
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else None


def scale_raw(raw, out, bscale, bzero, blank) -> None:
    """``out[...] = raw * bscale + bzero`` with the values ``astropy.io.fits.getdata`` gives
    (``uint=True``), in either precision of ``out``: 8/16-bit integers are scaled in float32,
    32/64-bit integers in float64, floats in their own precision, and the unsigned
    conventions (BSCALE 1 and BZERO -128 for 8 bits, 2**(bits-1) for more) are exact
    integers. Integer pixels equal to ``blank`` become NaN."""
    kind, size = raw.dtype.kind, raw.dtype.itemsize
    if bscale == 1 and bzero == 0:
        out[...] = raw
    elif kind in "iu" and bscale == 1 and bzero == (-128 if size == 1 else 1 << (8 * size - 1)):
        top = raw.view(f">u{size}") ^ (1 << (8 * size - 1))  # +BZERO, modulo 2**bits
        out[...] = top.view("i1") if size == 1 else top
    else:
        single = size == 4 if kind == "f" else size <= 2
        work = np.float32 if single else np.float64
        tmp = out if out.dtype == work else np.empty(raw.shape, work)
        tmp[...] = raw
        if bscale != 1:
            tmp *= work(bscale)
        if bzero != 0:
            tmp += work(bzero)
        if tmp is not out:
            out[...] = tmp
    if blank is not None and kind != "f":
        out[raw == blank] = np.nan


#: image HDUs that accompany a flat rather than being one: CCDData's planes (``MASK``,
#: ``UNCERT``, ``PSFIMAGE``) and gpuflat's own (``NCOMBINE``, ``CCD1_MASK``...)
_COMPANIONS = ("MASK", "UNCERT", "PSFIMAGE", "NCOMBINE")


def is_image_hdu(h) -> bool:
    """A 2-D image HDU holding a frame: primary or extension, plain or tile-compressed, and
    not a companion plane (so a flat written by ``CCDData.write`` with its uncertainty and
    mask, or a gpuflat product, is one image, not a mosaic)."""
    if isinstance(h, fits.CompImageHDU):
        image = len(h.shape) == 2
    else:
        image = isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and h.header.get("NAXIS", 0) == 2
    name = str(h.header.get("EXTNAME", "")).strip().upper()
    companion = any(name == c or name.endswith("_" + c) for c in _COMPANIONS)
    return image and not companion


def ext_key(h, index) -> tuple[str, int]:
    """How a mosaic extension is matched across files: (EXTNAME in upper case, EXTVER).

    EXTVER defaults to 1. An image HDU without EXTNAME is named by position, ``HDU<index>``
    (astropy names a tile-compressed one ``COMPRESSED_IMAGE``)."""
    name = str(h.header.get("EXTNAME", "")).strip().upper()
    if index == 0 and not name:
        name = "PRIMARY"
    ver = h.header.get("EXTVER", 1)
    try:
        ver = int(ver)
    except (TypeError, ValueError):
        ver = 1
    return (name or f"HDU{index}", ver)


def ext_label(key) -> str:
    """``CCD1`` for (CCD1, 1) or (CCD1, None), ``CCD1,2`` for (CCD1, 2)."""
    name, ver = key
    return name if ver in (None, 1) else f"{name},{ver}"


def resolve_hdu(hdul, spec, name) -> int:
    """The index of the image HDU that ``spec`` names in ``hdul``: an int (HDU index) or a
    (EXTNAME, EXTVER or None) pair; EXTNAME compares in any case, EXTVER None matches any
    version if only one has that name."""
    if isinstance(spec, int):
        if not 0 <= spec < len(hdul):
            raise FrameReadError(f"{name}: has no HDU {spec} (it has {len(hdul)})")
        return spec
    want_name, want_ver = spec
    want_name = want_name.upper()
    found = [
        i
        for i, h in enumerate(hdul)
        if (key := ext_key(h, i))[0] == want_name and want_ver in (None, key[1])
    ]
    if not found:
        raise FrameReadError(f"{name}: no extension {ext_label(spec)}")
    if len(found) > 1:
        vers = ", ".join(str(ext_key(hdul[i], i)[1]) for i in found)
        raise FrameReadError(
            f"{name}: {len(found)} extensions named {want_name} (EXTVER {vers}); "
            f"name one as {want_name},EXTVER"
        )
    return found[0]


def merged_header(header, primary):
    """``header`` plus the primary header's non-structural keywords that it lacks."""
    out = header.copy()
    for card in primary.cards:
        key = card.keyword
        if key not in STRUCTURAL and key not in ("COMMENT", "HISTORY", "") and key not in out:
            out.append(card, end=True)
    return out


def _check_whole(h, size, name) -> None:
    """The data of the plain image HDU ``h`` lies within the file's ``size`` bytes."""
    nbytes = h.header["NAXIS1"] * h.header["NAXIS2"] * abs(h.header["BITPIX"]) // 8
    need = h.fileinfo()["datLoc"] + nbytes
    if size < need:
        raise FrameReadError(f"{name}: truncated ({size} bytes, the image needs {need})")


def check_readable(path, indices) -> None:
    """Check that the image HDUs ``indices`` of ``path`` can all be read, as FitsFrame
    checks its own (a :class:`FrameReadError` naming the file), opening the file once."""
    file = FitsFile(path)
    try:
        for i in indices:
            file.frame(i)
    finally:
        file.close()


def _image_hdu_index(hdul, name):
    for i, h in enumerate(hdul):
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and (
            isinstance(h, fits.CompImageHDU) or h.header.get("NAXIS", 0) > 0
        ):
            return i
    raise FrameReadError(f"{name}: no image HDU")


def _is_ccddata(obj) -> bool:
    """Whether ``obj`` is a CCDData, without importing astropy.nddata (slow to import) when
    nothing has: a CCDData can only exist once its module is loaded."""
    nddata = sys.modules.get("astropy.nddata")
    return nddata is not None and isinstance(obj, nddata.CCDData)


def open_frames(inputs, stack: ExitStack, *, hdu=None, ccd_kwargs=None):
    """Turn the accepted input kinds into frame objects, closed when ``stack`` closes."""
    if isinstance(inputs, (str, os.PathLike)) or _is_ccddata(inputs):
        inputs = [inputs]
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 2:
            inputs = [inputs]
        elif inputs.ndim != 3:
            raise ValueError(
                f"inputs: an array must be 2-D or 3-D (frames, rows, cols), got {inputs.ndim}-D"
            )
    if not isinstance(inputs, (Sequence, np.ndarray)):
        raise TypeError(
            f"inputs must be a sequence of paths, CCDData or arrays, got {type(inputs).__name__}"
        )
    frames = []
    for i, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            frame = FitsFrame(item, hdu=hdu)
            stack.callback(frame.close)
        elif _is_ccddata(item):
            frame = ArrayFrame(
                item.data,
                name=f"ccddata[{i}]",
                mask=item.mask,
                header=_header(item.meta),
                unit=item.unit,
            )
        elif isinstance(item, np.ndarray) or hasattr(item, "__array__"):
            arr = np.ma.getdata(item)
            mask = np.ma.getmask(item) if np.ma.isMaskedArray(item) else None
            if arr.ndim != 2:
                raise ValueError(f"inputs[{i}]: a frame must be a 2-D array, got shape {arr.shape}")
            frame = ArrayFrame(
                np.asarray(arr), name=f"array[{i}]", mask=mask if mask is not np.ma.nomask else None
            )
        else:
            raise TypeError(
                f"inputs[{i}]: expected a path, CCDData or 2-D array, got {type(item).__name__}"
            )
        frames.append(frame)
    if not frames:
        raise NoFramesError("no frames to combine: the input is empty")
    return frames


def _header(meta):
    if isinstance(meta, fits.Header):
        return meta
    header = fits.Header()
    for key, value in (meta or {}).items():
        with suppress(ValueError, TypeError):
            header[key] = value
    return header


def bad_pixel_mask(mask):
    """A boolean bad-pixel mask (True = bad) from a 2-D array or a FITS file, or None."""
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike)):
        try:
            data = fits.getdata(mask)
        except (OSError, ValueError, IndexError) as exc:
            raise FrameReadError(f"{mask}: cannot read the bad-pixel mask ({exc})") from None
        mask = data
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D array or FITS file, got shape {arr.shape}")
    return arr != 0
