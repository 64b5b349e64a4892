"""Frames in (opened once, read by row bands) and products out (atomic, with provenance)."""

from __future__ import annotations

import datetime as _dt
import os
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
        index = _image_hdu_index(self._hdul, self.name) if hdu is None else hdu
        try:
            self._hdu = h = self._hdul[index]
        except (IndexError, KeyError):
            raise FrameReadError(f"{self.name}: has no HDU {index!r}") from None
        if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            raise FrameReadError(
                f"{self.name}: HDU {index!r} is a {type(h).__name__}, not an image"
            )
        header = h.header
        if h.header.get("NAXIS", 0) != 2 and not isinstance(h, fits.CompImageHDU):
            raise FrameReadError(
                f"{self.name}: HDU {index!r} is not a 2-D image (NAXIS={header.get('NAXIS')})"
            )
        self.header = header
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
        need = self._offset + self.shape[0] * self.shape[1] * self._raw.itemsize
        size = os.fstat(self._fh.fileno()).st_size
        if size < need:
            raise FrameReadError(f"{self.name}: truncated ({size} bytes, the image needs {need})")

    def read_rows(self, r0, r1, out):
        """Read rows [r0, r1) into ``out`` (float32 or float64), applying BSCALE/BZERO/BLANK."""
        if self._compressed:
            out[...] = self._hdu.section[r0:r1]
            return
        raw = np.empty((r1 - r0, self.shape[1]), self._raw)
        self._fh.seek(self._offset + r0 * self.shape[1] * self._raw.itemsize)
        if self._fh.readinto(raw) != raw.nbytes:
            raise FrameReadError(f"{self.name}: short read (file changed or truncated)")
        if out.dtype == np.float32 and self._raw.itemsize <= 2:
            # as astropy does for 8/16-bit integers: scale in float32
            out[...] = raw
            if self._bscale != 1:
                out *= np.float32(self._bscale)
            if self._bzero != 0:
                out += np.float32(self._bzero)
        else:
            out[...] = (
                raw * self._bscale + self._bzero if self._bscale != 1 or self._bzero != 0 else raw
            )
        if self._blank is not None:
            out[raw == self._blank] = np.nan

    def read_mask_rows(self, r0, r1):
        return None

    def close(self):
        self._hdul.close()
        self._fh.close()


def _image_hdu_index(hdul, name):
    for i, h in enumerate(hdul):
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and (
            isinstance(h, fits.CompImageHDU) or h.header.get("NAXIS", 0) > 0
        ):
            return i
    raise FrameReadError(f"{name}: no image HDU")


def product_header(header, *, names, scales, params: dict, backend: str, version: str):
    """The first frame's header minus structural keys, plus provenance."""
    out = fits.Header()
    for card in header.cards:
        if card.keyword not in _STRUCTURAL and card.keyword not in ("COMMENT", "HISTORY", ""):
            out.append(card, end=True)
    out["NCOMBINE"] = (len(names), "number of frames combined")
    out["GPF_VERS"] = (version, "gpuflat version")
    out["GPF_BACK"] = (backend, "gpuflat backend")
    out["GPF_DATE"] = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC")
    for i, (name, s) in enumerate(zip(names, scales, strict=True), start=1):
        out[f"IMCMB{i:03d}" if i < 1000 else f"IMC{i:05d}"] = (
            os.path.basename(name)[-68:],
            "input",
        )
        out[f"SCALE{i:03d}" if i < 1000 else f"SCL{i:05d}"] = (float(s), "scale factor")
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" for v in value)
        out[f"HIERARCH GPUFLAT {key.upper()}"] = "None" if value is None else value
    return out


def write_product(path, result, header, *, unit="adu", overwrite=False):
    """Write a combined flat: primary = image, UNCERT, MASK (uint8), NCOMBINE (survivors).

    Written to a temporary name beside the target, verified (checksums) and then moved into
    place: a killed run never leaves a half-written product, and an existing file is never
    clobbered unless ``overwrite``.
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
    hdul.append(
        fits.ImageHDU(
            result.count.astype(np.int16 if result.count.max(initial=0) < 32768 else np.int32),
            name="NCOMBINE",
        )
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        hdul.writeto(tmp, checksum=True, overwrite=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        with fits.open(tmp, checksum=True) as check, warnings.catch_warnings():
            warnings.simplefilter("error")
            for h in check:
                h.verify("exception")
            if check[0].data.shape != result.image.shape:
                raise GpuflatError(f"{path}: verification failed after writing")
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic and never clobbers: fails if path appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
