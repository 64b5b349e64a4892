"""Products out: the header with provenance, the single-image and multi-extension
writers. Every product is written through :func:`gpuflat._atomic.commit` and verified
before it is moved into place."""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._atomic import commit
from ._direct import DirectWriter, chunks
from ._frames import STRUCTURAL
from .errors import GpuflatError


def product_header(header, *, names, scales, params: dict, backend: str, version: str):
    """The first frame's header minus structural keys, plus provenance.

    ``scales`` may be None (a mosaic's primary header when every extension has its own)."""
    out = fits.Header()
    for card in header.cards:
        if card.keyword not in STRUCTURAL and card.keyword not in ("COMMENT", "HISTORY", ""):
            out.append(card, end=True)
    out["COMBINED"] = (True, "a combined master (astropy CCD guide)")
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


def _mask_data(mask):
    """The mask as uint8 (1 where no frame survived): the boolean array's own bytes."""
    return np.asarray(mask, bool).view(np.uint8)


def _stored(a, stack):
    """``a`` as FITS stores it, big-endian, in its own memory: swapped in place until
    ``stack`` closes (then swapped back). astropy writes such an array as it is, where it
    would swap a native one in place twice more (for its checksum, then for the write).
    An array that cannot be swapped in place (read-only, not contiguous) is returned as
    it is (astropy copes)."""
    if a.dtype.itemsize == 1 or a.dtype.byteorder == ">" or not _own(a):
        return a
    a.byteswap(inplace=True)
    stack.callback(a.byteswap, True)
    return a.view(a.dtype.newbyteorder(">"))


def _own(a) -> bool:
    return a.flags.c_contiguous and a.flags.writeable


_STEP = 1 << 16  # values per step of narrowing or widening the count in place


def _count_data(count, stack):
    """NCOMBINE's data, stored: int16 when every count fits, else int32. An int32 count
    is narrowed into the first half of its own memory until ``stack`` closes (then widened
    back): a fresh int16 copy of a 4096^2 count took 55-100 ms of page faults in a run.
    Step by step in order, each step's values land on bytes no later step reads; only the
    first step's source and destination overlap, and it goes through a copy (numpy's
    buffered cast does not guard against that overlap)."""
    small = count.max(initial=0) < 32768
    if not (small and count.dtype == np.int32 and _own(count)):
        return _stored(count.astype(np.int16 if small else np.int32, copy=False), stack)
    wide = count.reshape(-1)
    narrow = wide.view(">i2")[: wide.size]
    for a in range(0, wide.size, _STEP):
        src = wide[a : a + _STEP]
        np.copyto(narrow[a : a + _STEP], src if a else src.copy(), casting="unsafe")

    def widen():  # backwards: each step writes bytes only the steps done already read
        for a in reversed(range(0, wide.size, _STEP)):
            src = narrow[a : a + _STEP]
            np.copyto(wide[a : a + _STEP], src if a else src.copy())

    stack.callback(widen)
    return narrow.reshape(count.shape)


def write_product(
    path, result, header, *, unit="adu", overwrite=False, compress=False, defer=False
):
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
    # the layout CCDData.to_hdu(hdu_mask="MASK", hdu_uncertainty="UNCERT") writes, built
    # directly (importing astropy.nddata costs more than writing a 2048^2 product)
    header = header.copy()
    header["BUNIT"] = _unit_text(unit)
    uncert_header = fits.Header([("UTYPE", "StdDevUncertainty")])
    # the result's planes are stored in their own memory while they are written (the
    # caller hands them over meanwhile), and given back as they were
    with ExitStack() as stack:
        hdul = fits.HDUList(
            [
                fits.PrimaryHDU(_stored(result.image, stack), header),
                fits.ImageHDU(_mask_data(result.mask), name="MASK"),
                fits.ImageHDU(_stored(result.uncertainty, stack), uncert_header, name="UNCERT"),
                fits.ImageHDU(_count_data(result.count, stack), name="NCOMBINE"),
            ]
        )
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
        return _commit(path, hdul, overwrite=overwrite, defer=defer)


def _unit_text(unit) -> str:
    """The unit as CCDData writes it in BUNIT (``ADU`` -> ``adu``)."""
    from astropy import units as u  # loaded with astropy.io.fits already

    return u.Unit(unit or "adu").to_string()


def write_mef_product(path, primary_header, extensions, *, unit="adu", overwrite=False,
                      compress=False, defer=False):  # fmt: skip
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
        if card.keyword not in STRUCTURAL or card.keyword == "NCOMBINE":
            primary.append(card, end=True)
    hdus = [fits.PrimaryHDU(header=primary)]
    with ExitStack() as stack:  # the planes stored in their own memory, as write_product
        for (name, ver), result, header in extensions:
            image_header = header.copy()
            image_header["BUNIT"] = str(unit or "adu")
            image = result.image.astype(np.float32, copy=False)
            uncert = result.uncertainty.astype(np.float32, copy=False)
            planes = (
                ("", _stored(image, stack), image_header),
                ("_UNCERT", _stored(uncert, stack), None),
                ("_MASK", _mask_data(result.mask), None),
                ("_NCOMBINE", _count_data(result.count, stack), None),
            )
            for suffix, data, hdr in planes:
                kind = fits.CompImageHDU if compress else fits.ImageHDU
                h = kind(data, hdr, name=name + suffix, **(COMPRESSION if compress else {}))
                if ver != 1:
                    h.header["EXTVER"] = ver
                hdus.append(h)
        return _commit(path, fits.HDUList(hdus), overwrite=overwrite, defer=defer)


def _commit(path, hdul, *, overwrite, defer):
    """Write ``hdul`` atomically (:func:`gpuflat._atomic.commit`), verified and durable;
    ``defer``: return the callable that makes it durable and moves it into place."""
    expected = [h.data for h in hdul]
    compressed = any(isinstance(h, fits.CompImageHDU) for h in hdul)

    def write(tmp):
        with DirectWriter(tmp) as out:  # past the page cache (see _direct)
            hdul.writeto(out, checksum=True)

    def verify(tmp):
        _verify(tmp, expected, path, compressed)

    return commit(path, write, overwrite=overwrite, durable=True, verify=verify, defer=defer)


def _verify(tmp, expected, path, compressed):
    """The written file reads back: checksums, one HDU per expected array of the same
    shape, compressed HDUs identical to what was written. The warnings filter comes before
    the open: astropy checks the checksums inside fits.open, and only warns on a mismatch.
    Plain HDUs' checksums are checked here instead, on the file's bytes read back in one
    pass past the page cache (:func:`_failing_checksums`): decoded whole, a 4096^2 product's
    176 MB of fresh buffers took 0.1-0.27 s to check. ``compressed``: the product has
    tile-compressed HDUs, whose checksums astropy checks (they are small)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(tmp, checksum=compressed, memmap=False) as check:
            for h in check:
                h.verify("exception")
            if len(check) != len(expected):
                raise GpuflatError(f"{path}: verification failed after writing")
            if not compressed:
                for h in _failing_checksums(tmp, check):
                    raise GpuflatError(f"{path}: {h.name} fails its checksum after writing")
            for h, want in zip(check, expected, strict=True):
                if want is None:
                    continue
                if _shape(h) != want.shape:
                    raise GpuflatError(f"{path}: verification failed after writing")
                if isinstance(h, fits.CompImageHDU) and not np.array_equal(
                    h.data, want, equal_nan=want.dtype.kind == "f"
                ):
                    raise GpuflatError(f"{path}: {h.name} does not read back losslessly")


def _failing_checksums(tmp, hdul) -> list:
    """The plain HDUs of ``hdul`` (headers read, data not) whose data do not match their
    DATASUM and CHECKSUM, with astropy's own arithmetic (``_compute_checksum`` takes the
    running sum of the pieces before, ``_calculate_checksum`` the header's) over the file's
    bytes read once, in chunks (:func:`gpuflat._direct.chunks`). A piece of an HDU's data
    starts a multiple of 4 bytes into it (data start at multiples of 2880 bytes, chunks at
    multiples of 4096), as the 32-bit sums need; the padding after the data is zeros, which
    add nothing."""
    infos = [hdul.fileinfo(i) for i in range(len(hdul))]
    spans = [(f["datLoc"], f["datLoc"] + f["datSpan"]) for f in infos]
    sums = [np.uint32(0)] * len(spans)
    for offset, chunk in chunks(tmp):
        data, end = np.frombuffer(chunk, np.uint8), offset + len(chunk)
        for i, (a, b) in enumerate(spans):
            if a < end and b > offset:
                piece = data[max(a, offset) - offset : min(b, end) - offset]
                sums[i] = hdul[i]._compute_checksum(piece, sums[i])
    return [
        h
        for h, datasum in zip(hdul, sums, strict=True)
        if "CHECKSUM" not in h.header
        or "DATASUM" not in h.header
        or int(datasum) != int(h.header["DATASUM"])
        or h._calculate_checksum(datasum) != h.header["CHECKSUM"]
    ]


def _shape(h) -> tuple:
    """An HDU's data shape from its header (no data decoded)."""
    if isinstance(h, fits.CompImageHDU):
        return tuple(h.shape)
    return tuple(h.header.get(f"NAXIS{i}", 0) for i in range(h.header.get("NAXIS", 0), 0, -1))
