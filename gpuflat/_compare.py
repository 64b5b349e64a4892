"""A master flat's difference from a reference flat (the simulation's truth, or another
master): the figure of merit of sky flats (``gpuflat compare``, :func:`compare_flats`)."""

from __future__ import annotations

import math
import os

import numpy as np

#: 1 / Phi^-1(3/4): the MAD of a normal distribution times this is its standard deviation
MAD_TO_STD = 1.482602218505602


def compare_flats(master, reference, *, sigma: float | None = None, nsigma: float = 5.0) -> dict:
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

    Returns
    -------
    dict
        ``pixels`` (compared), ``rms`` (of ratio - 1), ``robust_sigma`` (1.4826 x MAD of
        the ratio), ``sigma`` (the one used) and ``sigma_from`` (``"given"`` or
        ``"robust"``), ``nsigma``, ``off`` (pixels with |ratio - 1| > nsigma x sigma),
        ``off_fraction``, ``max_deviation`` (largest |ratio - 1|, in units of sigma).
    """
    m, m_mask = _flat(master, "master")
    r, r_mask = _flat(reference, "reference")
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
    }


def _flat(value, what):
    """(image as float64, mask) of an array or a FITS file."""
    if isinstance(value, (str, os.PathLike)):
        from astropy.io import fits

        try:
            with fits.open(value, memmap=False) as hdul:
                image = next((h for h in hdul if h.is_image and h.data is not None), None)
                if image is None:
                    raise ValueError(f"{what} {os.fspath(value)}: no image in the file")
                data = np.asarray(image.data, np.float64)
                mask = hdul["MASK"].data.astype(bool) if "MASK" in hdul else None
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} {os.fspath(value)}: no such file") from None
        except OSError as exc:
            raise OSError(f"{what} {os.fspath(value)}: not a readable FITS file ({exc})") from None
    else:
        data = np.asarray(value, np.float64)
        mask = np.ma.getmaskarray(value) if np.ma.isMaskedArray(value) else None
    if data.ndim != 2:
        raise ValueError(f"{what} must be a 2-D image, got {data.ndim} dimension(s)")
    return data, np.zeros(data.shape, bool) if mask is None else mask
