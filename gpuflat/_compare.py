"""A master flat's difference from a reference flat (the simulation's truth, or another
master): the figure of merit of sky flats (``gpuflat compare``, :func:`compare_flats`)."""

from __future__ import annotations

import math
import os

import numpy as np

#: 1 / Phi^-1(3/4): the MAD of a normal distribution times this is its standard deviation
MAD_TO_STD = 1.482602218505602


def compare_flats(
    master, reference, *, sigma: float | None = None, nsigma: float = 5.0, count=None
) -> dict:
    """How far ``master`` is from ``reference``: the RMS of their ratio and the number of
    pixels off by more than ``nsigma`` times the expected noise.

    Both are normalised to a median of 1 over the pixels where both are finite, positive
    and unmasked (a product's ``MASK`` plane); the ratio ``master / reference`` is then
    normalised to a median of 1 too (a master's level is arbitrary).

    Parameters
    ----------
    master, reference : 2-D array or path
        The flats; a path is a FITS file whose primary image (or first image HDU) is the flat
        and whose ``MASK`` extension, when there is one, marks pixels left out.
    sigma : float, optional
        The expected noise of the ratio (e.g. the ``robust_sigma`` of a master made without
        stars, so that masters of the same night are counted against one yardstick).
        Default: the ratio's own robust scatter (1.4826 x MAD), which stars barely move.
    nsigma : float
        Threshold in units of ``sigma``.
    count : 2-D array, optional
        The master's survivors per pixel (a product's ``NCOMBINE`` plane is read when
        ``master`` is a path): then also ``off_expected``, the pixels off by more than
        ``nsigma`` times their own expected noise, ``sigma x sqrt(N / count)`` with N the
        most survivors of any pixel (a pixel combined from fewer frames, because masks or
        clipping took some, is noisier).

    Returns
    -------
    dict
        ``pixels`` (compared), ``rms`` (of ratio - 1), ``robust_sigma`` (1.4826 x MAD of
        the ratio), ``sigma`` (the one used) and ``sigma_from`` (``"given"`` or
        ``"robust"``), ``nsigma``, ``off`` (pixels with |ratio - 1| > nsigma x sigma),
        ``off_fraction``, ``max_deviation`` (largest |ratio - 1|, in units of sigma); and
        ``off_expected`` with a count.
    """
    m, m_mask, m_count = _flat(master, "master")
    if count is not None:
        m_count = np.asarray(count)
        if m_count.shape != m.shape:
            raise ValueError(f"count shape {m_count.shape} differs from the master's {m.shape}")
    r, r_mask, _ = _flat(reference, "reference")
    if m.shape != r.shape:
        raise ValueError(f"master shape {m.shape} differs from the reference's {r.shape}")
    if not (isinstance(nsigma, (int, float)) and nsigma > 0 and math.isfinite(nsigma)):
        raise ValueError(f"nsigma must be a positive number, got {nsigma!r}")
    if sigma is not None and not (
        isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)
    ):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    good = np.isfinite(m) & np.isfinite(r) & (m > 0) & (r > 0) & ~m_mask & ~r_mask
    count = int(good.sum())
    if count == 0:
        raise ValueError("master and reference have no pixel in common to compare")
    mv = m[good] / np.median(m[good])
    rv = r[good] / np.median(r[good])
    ratio = mv / rv
    ratio /= np.median(ratio)
    dev = ratio - 1.0
    robust = float(MAD_TO_STD * np.median(np.abs(dev)))
    used = robust if sigma is None else float(sigma)
    off = int(np.count_nonzero(np.abs(dev) > nsigma * used)) if used > 0 else 0
    extra = {}
    if m_count is not None:
        k = m_count[good].astype(np.float64)
        expected = used * np.sqrt(k.max() / np.maximum(k, 1))
        extra["off_expected"] = int(np.count_nonzero(np.abs(dev) > nsigma * expected))
    return {
        "pixels": count,
        "rms": float(np.sqrt(np.mean(dev * dev))),
        "robust_sigma": robust,
        "sigma": used,
        "sigma_from": "robust" if sigma is None else "given",
        "nsigma": float(nsigma),
        "off": off,
        "off_fraction": off / count,
        "max_deviation": float(np.max(np.abs(dev)) / used) if used > 0 else math.inf,
        **extra,
    }


def _flat(value, what):
    """(image as float64, mask, NCOMBINE plane or None) of an array or a FITS file."""
    if isinstance(value, (str, os.PathLike)):
        from astropy.io import fits

        try:
            with fits.open(value, memmap=False) as hdul:
                image = next((h for h in hdul if h.is_image and h.data is not None), None)
                if image is None:
                    raise ValueError(f"{what} {os.fspath(value)}: no image in the file")
                data = np.asarray(image.data, np.float64)
                mask = hdul["MASK"].data.astype(bool) if "MASK" in hdul else None
                count = np.asarray(hdul["NCOMBINE"].data) if "NCOMBINE" in hdul else None
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} {os.fspath(value)}: no such file") from None
        except OSError as exc:
            raise OSError(f"{what} {os.fspath(value)}: not a readable FITS file ({exc})") from None
    else:
        data = np.asarray(value, np.float64)
        mask = np.ma.getmaskarray(value) if np.ma.isMaskedArray(value) else None
        count = None
    if data.ndim != 2:
        raise ValueError(f"{what} must be a 2-D image, got {data.ndim} dimension(s)")
    return data, np.zeros(data.shape, bool) if mask is None else mask, count
