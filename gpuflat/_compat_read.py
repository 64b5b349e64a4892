"""Inputs of the ccdproc drop-in (:mod:`gpuflat.ccdproc_compat`), read as ``CCDData.read``
reads them: keywords, image lists, the output template and the frames."""

from __future__ import annotations

import difflib
import inspect
import os

import numpy as np
from astropy.nddata import CCDData, StdDevUncertainty

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


def _check_ccdkwargs(ccdkwargs, own):
    """Misspelled keywords are a TypeError with a suggestion (``own``: combine's own)."""
    if not ccdkwargs:
        return
    known = _read_keywords()
    for key in ccdkwargs:
        if key not in known:
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
