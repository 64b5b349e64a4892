"""Products out: the header with provenance, the single-image and multi-extension
writers. Every product is written through :func:`gpuflat._atomic.commit` and verified
before it is moved into place."""

from __future__ import annotations

import datetime as _dt
import io
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path

import numpy as np
from astropy.io import fits

from ._atomic import commit, temporary_name
from ._direct import PIECE, DirectWriter, PlacedWriter, chunks
from ._frames import STRUCTURAL
from .errors import GpuflatError


def product_header(header, *, names, scales, params: dict, backend: str, version: str,
                   masked=None):  # fmt: skip
    """The first frame's header minus structural keys, plus provenance.

    ``scales`` may be None (a mosaic's primary header when every extension has its own);
    ``masked``: per frame, the pixels the mask pass left out (``MASKPnnn``), or None."""
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
    for i, m in enumerate(() if masked is None else masked, start=1):
        out[f"MASKP{i:03d}" if i < 1000 else f"MSK{i:05d}"] = (int(m), "pixels masked (sources)")
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" for v in value)
        out[f"HIERARCH GPUFLAT {key.upper()}"] = value  # None: a card with no value
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
    clobbered unless ``overwrite``. ``compress``: MASK, UNCERT and NCOMBINE are
    tile-compressed losslessly (:data:`COMPRESSION`); the flat stays the plain primary image,
    with the whole header, so that the guide's next steps read the product as they read an
    uncompressed one: ``CCDData.read(path)`` (which reads the primary HDU, and when that is
    empty looks for a plain ``ImageHDU`` only, never a ``CompImageHDU``) and
    ``ImageFileCollection`` (which filters on the primary header).
    """
    path = _new(path, overwrite)
    # the result's planes are stored in their own memory while they are written (the
    # caller hands them over meanwhile), and given back as they were
    with ExitStack() as stack:
        hdul = _product_hdus(
            header, unit, _stored(result.image, stack), _mask_data(result.mask),
            _stored(result.uncertainty, stack), _count_data(result.count, stack),
        )  # fmt: skip
        if compress:  # the flat itself stays a plain primary image (see above)
            hdul = fits.HDUList(
                [
                    hdul[0],
                    *(
                        fits.CompImageHDU(h.data, h.header, name=h.name, **COMPRESSION)
                        for h in hdul[1:]
                    ),
                ]
            )
        return _commit(path, hdul, overwrite=overwrite, defer=defer)


def _new(path, overwrite) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use overwrite to replace it)")
    return path


def _product_hdus(header, unit, image, mask, uncertainty, count) -> fits.HDUList:
    """The layout CCDData.to_hdu(hdu_mask="MASK", hdu_uncertainty="UNCERT") writes, built
    directly (importing astropy.nddata costs more than writing a 2048^2 product)."""
    header = header.copy()
    header["BUNIT"] = _unit_text(unit)
    uncert_header = fits.Header([("UTYPE", "StdDevUncertainty")])
    return fits.HDUList(
        [
            fits.PrimaryHDU(image, header),
            fits.ImageHDU(mask, name="MASK"),
            fits.ImageHDU(uncertainty, uncert_header, name="UNCERT"),
            fits.ImageHDU(count, name="NCOMBINE"),
        ]
    )


class StreamedProduct:
    """A single-image product (:func:`write_product`'s file, byte for byte but for the
    times in its checksum cards' comments) written while its group is combined: each
    band's rows of the four planes go to the temporary file as soon as the band is
    combined, stored and checksummed on the way, and the headers last, once the checksums
    are known. The run never holds the whole planes: for a 20 x 4096^2 group they were
    208 MB of fresh memory (0.2-0.45 s of page faults on this project's VMs) and 176 MB
    written after the combination instead of during it.

    The pipeline's results object (``_memory.Planes``): :meth:`rows` lends the band's
    buffers (float32 image and uncertainty, int32 count), :meth:`done` stores them on this
    product's thread (while the backend writes the next band into a second set of
    buffers), :meth:`close` waits for all of them; ``survivors`` and ``empty`` then count
    the samples that survived and the pixels without any. :meth:`write` waits for them
    too (the last bands of a group, the only one of a group in one band, are stored while
    the run goes on with its next group), finishes the file, verifies it and commits it,
    as :func:`write_product` does (``defer`` as there); :meth:`discard` removes it.
    Counts must fit int16, as they do for fewer than 32768 frames (``write_product``
    stores them as int16 when they fit).
    """

    #: stored types of the planes, in the file's order: image, MASK, UNCERT, NCOMBINE
    STORED = (np.dtype(">f4"), np.dtype("u1"), np.dtype(">f4"), np.dtype(">i2"))

    def __init__(self, path, header, shape, *, unit="adu", overwrite=False, memory=None):
        self.path, self.overwrite, self.shape = _new(path, overwrite), overwrite, shape
        tiny = [np.zeros((1, 1), dt) for dt in self.STORED]
        self._hdul = _product_hdus(header, unit, *tiny)
        # astropy completes the headers as it writes them (EXTEND, the checksum cards);
        # written with one-pixel planes, they differ from the product's in NAXISn only
        self._hdul.writeto(io.BytesIO(), checksum=True)
        self._starts, self._data, at = [], [], 0
        for h, stored in zip(self._hdul, self.STORED, strict=True):
            h.header["NAXIS1"], h.header["NAXIS2"] = shape[1], shape[0]
            self._starts.append(at)
            at += len(h.header.tostring())
            self._data.append(at)
            at += shape[0] * shape[1] * stored.itemsize
            at += -at % 2880  # the data's padding: zeros, never written
        self._sums = [0] * len(self._hdul)
        self.survivors = self.empty = 0
        self._tmp = temporary_name(self.path)
        self._out = PlacedWriter(self._tmp, at)
        # two sets of band buffers: the backend writes one while this product's thread
        # stores the other; both in one block of ``memory(nbytes)`` (a run's workspace
        # lends it), of which a combination in one band touches only the first half
        self._memory = memory or (lambda nbytes, user: np.empty(nbytes, np.uint8))
        self._scratch, self._stored, self._turn = [None, None], [None, None], 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gpuflat-product")
        # "open", then "writing" (write owns the file from then on) or "discarded": a run's
        # writer thread may write it while an interrupt makes the main thread discard it
        self._state, self._lock = "open", threading.Lock()

    def rows(self, r0, r1):
        k, n = self._turn, (r1 - r0) * self.shape[1]
        if self._stored[k] is not None:  # its previous band stored (or its error raised)
            self._stored[k], stored = None, self._stored[k]
            stored.result()
        types = (np.float32, np.float32, np.int32, bool)
        if self._scratch[k] is None:  # the first band: both sets, for bands no larger
            # each array at a multiple of 64 bytes (aligned for the kernels, whose
            # compiled code takes aligned arrays only)
            sizes = [-(-n * np.dtype(t).itemsize // 64) * 64 for t in types]
            starts = np.cumsum([0, *sizes])
            block = self._memory(2 * int(starts[-1]), self._stores_done)
            for j, b in enumerate(block.reshape(2, -1)):
                self._scratch[j] = tuple(
                    b[a : a + n * np.dtype(t).itemsize].view(t)
                    for a, t in zip(starts, types, strict=False)
                )
        elif self._scratch[k][0].size < n:  # a larger band after all: on its own
            self._scratch[k] = tuple(np.empty(n, t) for t in types)
        return tuple(a[:n] for a in self._scratch[k][:3])

    def done(self, r0, r1) -> None:
        k = self._turn
        self._stored[k] = self._thread.submit(self._store, self._scratch[k], r0, r1)
        self._turn = 1 - k

    def _store(self, scratch, r0, r1) -> None:
        """On this product's thread: the band's planes stored, summed, written."""
        n = (r1 - r0) * self.shape[1]
        image, uncert, count, mask = (a[:n] for a in scratch)
        np.equal(count, 0, out=mask)
        self.survivors += int(count.sum(dtype=np.int64))
        self.empty += int(np.count_nonzero(mask))
        for i, values in enumerate((image, mask, uncert, count)):
            self._put(i, r0 * self.shape[1], values)

    def _put(self, i, first, values) -> None:
        """Plane ``i``'s values from pixel ``first`` on: stored, summed, written."""
        stored, hdu = self.STORED[i], self._hdul[i]
        step = PIECE // stored.itemsize
        for a in range(0, values.size, step):
            v = values[a : a + step]
            at = (first + a) * stored.itemsize  # in the plane's data
            staged = self._out.staging(self._data[i] + at, v.size * stored.itemsize)
            np.copyto(np.frombuffer(staged, stored), v, casting="unsafe")
            self._sums[i] = _checksum(hdu, staged, at % 4, self._sums[i])
            self._out.put(self._data[i] + at, staged)

    def close(self) -> None:
        """Every band given: returns when they are all stored (raises the first error)."""
        self._thread.shutdown(wait=True)
        stored, self._stored = self._stored, [None, None]
        for future in stored:
            if future is not None:
                future.result()

    def _stores_done(self) -> None:
        """Returns once this product's thread has stored every band given (its errors are
        for :meth:`close`): its buffers are free."""
        self._thread.shutdown(wait=True)

    def _claim(self, state) -> bool:
        """Move from "open" to ``state``; False when :meth:`write` or :meth:`discard` came
        first."""
        with self._lock:
            if self._state != "open":
                return False
            self._state = state
            return True

    def write(self, defer=False):
        """The headers (with the checksums), then the commit; on any error the temporary
        goes. Refused (``GpuflatError``) once discarded."""
        if not self._claim("writing"):
            raise GpuflatError(f"{self.path}: not written, dropped (interrupted)")
        try:
            self.close()  # a band's store may have failed (a full disk)
        except BaseException:
            self._discard()
            raise

        def finish(tmp):
            with self._out:  # closed when done, abandoned on an error (commit removes it)
                self._finish()

        expected = [np.broadcast_to(np.zeros((), dt), self.shape) for dt in self.STORED]

        def verify(tmp):
            _verify(tmp, expected, self.path, compressed=False)

        try:
            return commit(self.path, finish, overwrite=self.overwrite, durable=True,
                          verify=verify, defer=defer, tmp=self._tmp)  # fmt: skip
        except BaseException:  # (an interrupt before the file was reached: closed too)
            self._discard()
            raise

    def _finish(self) -> None:
        """The headers, with the checksums of the data."""
        stamp = self._hdul[0]._get_timestamp()
        for i, h in enumerate(self._hdul):
            datasum = self._sums[i]
            h.header["DATASUM"] = (str(int(datasum)), f"data unit checksum updated {stamp}")
            h.header["CHECKSUM"] = ("0" * 16, f"HDU checksum updated {stamp}")
            h.header["CHECKSUM"] = h._calculate_checksum(datasum)
            text = h.header.tostring().encode("ascii")
            if self._starts[i] + len(text) != self._data[i]:
                raise GpuflatError(f"{self.path}: a header changed size while written")
            self._out.put(self._starts[i], text)

    def discard(self) -> None:
        """The temporary file closed and removed (the combination failed or is redone, or
        the run is interrupted); nothing once :meth:`write` has begun, which cleans up after
        itself."""
        if self._claim("discarded"):
            self._discard()

    def _discard(self) -> None:
        try:
            with suppress(Exception):  # the file goes anyway
                self.close()
        finally:
            self._out.discard()
            self._tmp.unlink(missing_ok=True)


_INPUT = re.compile(r"IMCMB\d{3}|IMC\d{5}")
_SCALE = re.compile(r"SCALE\d{3}|SCL\d{5}")


def product_provenance(path) -> dict:
    """What an existing product records of how it was made, as a report entry's fields:
    ``frames`` (per input, ``file`` and ``scale`` from ``IMCMBnnn`` and ``SCALEnnn``),
    ``frames_combined`` (``NCOMBINE``), ``backend``, ``made`` (gpuflat's version and the
    date), ``parameters`` (``HIERARCH GPUFLAT``), and from a single image's NCOMBINE plane
    its ``rejected_fraction`` and ``pixels_without_survivor`` (the figures a run reports).
    Raises ``OSError`` when the file is not FITS."""
    with fits.open(path, memmap=False) as hdul:
        h = hdul[0].header
        names = [v for k, v in h.items() if _INPUT.fullmatch(k)]
        scales = [v for k, v in h.items() if _SCALE.fullmatch(k)]
        frames = [{"file": n} for n in names]
        if len(scales) == len(names):
            for f, v in zip(frames, scales, strict=True):
                f["scale"] = v
        out = {
            "frames": frames,
            "frames_combined": h.get("NCOMBINE"),
            "backend": h.get("GPF_BACK"),
            "made": {"gpuflat": h.get("GPF_VERS"), "date": h.get("GPF_DATE")},
            "parameters": {
                k.removeprefix("GPUFLAT ").lower(): v
                for k, v in h.items()
                if k.startswith("GPUFLAT ")
            },
        }
        frames_combined = out["frames_combined"]
        if "NCOMBINE" in hdul and isinstance(frames_combined, int) and frames_combined > 0:
            count = hdul["NCOMBINE"].data
            if count is not None and count.size:
                survivors = int(count.sum(dtype=np.int64))
                out["rejected_fraction"] = float(1 - survivors / count.size / frames_combined)
                out["pixels_without_survivor"] = int(np.count_nonzero(count == 0))
    return out


def _checksum(hdu, data, phase, total):
    """astropy's running checksum (``_compute_checksum``) of the bytes ``data`` whose first
    byte is byte ``phase`` (0-3) of a 32-bit word: the first word's bytes before it (given
    already) count as zeros, as the last word's bytes after the data do."""
    data = np.frombuffer(data, np.uint8)
    if phase:
        head = min(len(data), 4 - phase)
        word = np.frombuffer(bytes(phase) + data[:head].tobytes(), np.uint8)
        total = hdu._compute_checksum(word, total)
        data = data[head:]
    return hdu._compute_checksum(data, total)


def _unit_text(unit) -> str:
    """The unit as CCDData writes it in BUNIT (``''`` dimensionless, which CCDData.read
    takes back; None as adu); one astropy does not know (the inputs' BUNIT) as it is."""
    from astropy import units as u  # loaded with astropy.io.fits already

    return u.Unit("adu" if unit is None else unit, parse_strict="silent").to_string()


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
            image_header["BUNIT"] = _unit_text(unit)
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
