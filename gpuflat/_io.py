"""Frames in (opened once, read by row bands) and products out (atomic, with provenance)."""

from __future__ import annotations

import datetime as _dt
import glob
import os
import re
import socket
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import FrameReadError, GpuflatError

_STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
    "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "EXTNAME",
    "EXTVER", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2",
    "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "NCOMBINE", "BUNIT",
}  # fmt: skip


class ArrayFrame:
    """A frame already in memory: a 2-D array, optionally with a mask and a header."""

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


class FitsFrame:
    """One image HDU of a FITS file. The file is opened once and stays open; uncompressed
    data are read by direct positioned reads of the needed rows (no memory mapping, so the
    resident memory does not grow with the files), compressed data through astropy sections."""

    mask = None

    def __init__(self, path, *, hdu=None):
        self.name = str(path)
        try:
            self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise FrameReadError(f"{path}: cannot open: {exc.strerror or exc}") from None
        try:
            self._open(hdu)
        except GpuflatError:
            self._fh.close()
            raise
        except Exception as exc:
            self._fh.close()
            raise FrameReadError(f"{path}: not a readable FITS image ({exc})") from None

    def _open(self, hdu):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # astropy warns on truncation: make it an error
            self._hdul = fits.open(self._fh, memmap=False, lazy_load_hdus=False)
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
        self._blank = header.get("BLANK") if bitpix > 0 else None
        self._offset = h.fileinfo()["datLoc"]
        _check_whole(h, os.fstat(self._fh.fileno()).st_size, self.name)

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
        raw = np.empty((r1 - r0, self.shape[1]), self._raw)
        self._fh.seek(self._offset + r0 * self.shape[1] * self._raw.itemsize)
        if self._fh.readinto(raw) != raw.nbytes:
            raise FrameReadError(f"{self.name}: short read (file changed or truncated)")
        scale_raw(raw, out, self._bscale, self._bzero, self._blank)

    def read_mask_rows(self, r0, r1):
        return None

    def close(self):
        self._hdul.close()
        self._fh.close()


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
        if key not in _STRUCTURAL and key not in ("COMMENT", "HISTORY", "") and key not in out:
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
    frame = FitsFrame(path, hdu=indices[0])
    try:
        size = os.fstat(frame._fh.fileno()).st_size
        for i in indices[1:]:
            h = frame._hdul[i]
            if not isinstance(h, fits.CompImageHDU):  # tiles are checked as they are read
                _check_whole(h, size, frame.name)
    finally:
        frame.close()


def _image_hdu_index(hdul, name):
    for i, h in enumerate(hdul):
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and (
            isinstance(h, fits.CompImageHDU) or h.header.get("NAXIS", 0) > 0
        ):
            return i
    raise FrameReadError(f"{name}: no image HDU")


def product_header(header, *, names, scales, params: dict, backend: str, version: str):
    """The first frame's header minus structural keys, plus provenance.

    ``scales`` may be None (a mosaic's primary header when every extension has its own)."""
    out = fits.Header()
    for card in header.cards:
        if card.keyword not in _STRUCTURAL and card.keyword not in ("COMMENT", "HISTORY", ""):
            out.append(card, end=True)
    out["NCOMBINE"] = (len(names), "number of frames combined")
    out["GPF_VERS"] = (version, "gpuflat version")
    out["GPF_BACK"] = (backend, "gpuflat backend")
    out["GPF_DATE"] = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC")
    for i, name in enumerate(names, start=1):
        out[f"IMCMB{i:03d}" if i < 1000 else f"IMC{i:05d}"] = (
            os.path.basename(name)[-68:],
            "input",
        )
    for i, s in enumerate(() if scales is None else scales, start=1):
        out[f"SCALE{i:03d}" if i < 1000 else f"SCL{i:05d}"] = (float(s), "scale factor")
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" for v in value)
        out[f"HIERARCH GPUFLAT {key.upper()}"] = "None" if value is None else value
    return out


#: ``compress=True``: tile compression that is lossless for float data too (GZIP_2, the
#: bytes shuffled, no quantisation: astropy's ``quantize_level=0``), one tile per row.
COMPRESSION = {"compression_type": "GZIP_2", "quantize_level": 0.0}


def _count_data(count):
    return count.astype(np.int16 if count.max(initial=0) < 32768 else np.int32)


def write_product(path, result, header, *, unit="adu", overwrite=False, compress=False):
    """Write a combined flat: primary = image, UNCERT, MASK (uint8), NCOMBINE (survivors).

    Written to a temporary name beside the target, verified (checksums) and then moved into
    place: a killed run never leaves a half-written product, and an existing file is never
    clobbered unless ``overwrite``. ``compress``: the primary HDU is header-only and the
    flat is the tile-compressed extension ``COMPRESSED_IMAGE``, followed by UNCERT, MASK and
    NCOMBINE, all compressed losslessly (:data:`COMPRESSION`); ``CCDData.read(path, hdu=1)``
    reads it (without ``hdu=1`` astropy's reader does not look into compressed HDUs).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use overwrite to replace it)")
    from astropy.nddata import CCDData, StdDevUncertainty  # slow to import: only here

    ccd = CCDData(
        result.image,
        unit=unit or "adu",
        uncertainty=StdDevUncertainty(result.uncertainty),
        mask=result.mask,
        meta=header,
    )
    hdul = ccd.to_hdu(hdu_mask="MASK", hdu_uncertainty="UNCERT")
    hdul.append(fits.ImageHDU(_count_data(result.count), name="NCOMBINE"))
    if compress:
        first = hdul[0]
        hdul = fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.CompImageHDU(first.data, first.header, **COMPRESSION),
                *(
                    fits.CompImageHDU(h.data, h.header, name=h.name, **COMPRESSION)
                    for h in hdul[1:]
                ),
            ]
        )
    return _commit(path, hdul, overwrite=overwrite)


def write_mef_product(path, primary_header, extensions, *, unit="adu", overwrite=False,
                      compress=False):  # fmt: skip
    """Write a combined mosaic: one file, the extensions in the given order.

    ``extensions`` is a sequence of ``(key, result, header)``, ``key`` = (EXTNAME, EXTVER).
    The primary HDU is header-only (``primary_header``); extension ``CCD1`` (say) becomes
    four HDUs: ``CCD1`` (the flat, float32, with ``header`` and ``BUNIT``), ``CCD1_UNCERT``
    (uncertainty), ``CCD1_MASK`` (uint8, 1 where no frame survived), ``CCD1_NCOMBINE``
    (survivors per pixel); all four carry the input's EXTVER when it is not 1. Written
    atomically and verified like :func:`write_product`; ``compress`` tile-compresses every
    image HDU losslessly. ``CCDData.read(path, hdu="CCD1", hdu_uncertainty="CCD1_UNCERT",
    hdu_mask="CCD1_MASK")`` reads one detector back.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use overwrite to replace it)")
    primary = fits.Header()
    for card in primary_header.cards:
        if card.keyword not in _STRUCTURAL or card.keyword == "NCOMBINE":
            primary.append(card, end=True)
    hdus = [fits.PrimaryHDU(header=primary)]
    for (name, ver), result, header in extensions:
        image_header = header.copy()
        image_header["BUNIT"] = str(unit or "adu")
        planes = (
            ("", result.image.astype(np.float32, copy=False), image_header),
            ("_UNCERT", result.uncertainty.astype(np.float32, copy=False), None),
            ("_MASK", result.mask.astype(np.uint8), None),
            ("_NCOMBINE", _count_data(result.count), None),
        )
        for suffix, data, hdr in planes:
            kind = fits.CompImageHDU if compress else fits.ImageHDU
            h = kind(data, hdr, name=name + suffix, **(COMPRESSION if compress else {}))
            if ver != 1:
                h.header["EXTVER"] = ver
            hdus.append(h)
    return _commit(path, fits.HDUList(hdus), overwrite=overwrite)


_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _remove_stale_temporaries(path):
    """Remove the temporary files of ``path`` that a killed process of this host left
    (its PID is gone). Those of other hosts (a cluster on a shared filesystem) stay: their
    PIDs cannot be checked from here."""
    prefix = f".{path.name}.tmp-{_HOST}-"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix) :]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _commit(path, hdul, *, overwrite):
    """Write ``hdul`` to a temporary name beside ``path``, verify it (checksums, shapes;
    compressed HDUs must read back identical) and move it into place."""
    expected = [None if h.data is None else h.data for h in hdul]
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")
    try:
        hdul.writeto(tmp, checksum=True, overwrite=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        with fits.open(tmp, checksum=True) as check, warnings.catch_warnings():
            warnings.simplefilter("error")
            for h in check:
                h.verify("exception")
            if len(check) != len(expected):
                raise GpuflatError(f"{path}: verification failed after writing")
            for h, want in zip(check, expected, strict=True):
                if want is None:
                    continue
                if h.data is None or h.data.shape != want.shape:
                    raise GpuflatError(f"{path}: verification failed after writing")
                if isinstance(h, fits.CompImageHDU) and not np.array_equal(
                    h.data, want, equal_nan=want.dtype.kind == "f"
                ):
                    raise GpuflatError(f"{path}: {h.name} does not read back losslessly")
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic and never clobbers: fails if path appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
