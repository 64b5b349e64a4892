"""An independent plain NumPy + astropy reference of gpuflat's per-pixel numerics.

It shares no code with gpuflat: vectorised over pixels with NumPy, clipping with
``astropy.stats.sigma_clip``, ranks with a stable argsort. Values agree with the backends
to float64 rounding (summation orders differ); survivor counts agree exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import mad_std, sigma_clip


def reference_combine(
    data,
    mask=None,
    scale=None,
    weight=None,
    *,
    clip_scaled=True,
    min_value=-np.inf,
    max_value=np.inf,
    nlow=0,
    nhigh=0,
    sigma=True,
    center="median",
    dev="mad_std",
    sigma_low=5.0,
    sigma_high=5.0,
    maxiters=1,
    method="average",
    return_rejected=False,
):
    """Combine ``data[n, npix]``; returns (image, uncertainty, count), and with
    ``return_rejected`` also the per-frame number of valid samples that did not survive."""
    n, npix = data.shape
    x = data.astype(np.float64)
    scale = np.ones(n) if scale is None else np.asarray(scale, np.float64)
    valid = np.isfinite(x) & (x >= min_value) & (x <= max_value)
    if mask is not None:
        valid &= mask == 0
    y = x * scale[:, None]
    v = np.where(valid, y if clip_scaled else x, np.nan)
    inwin = valid
    if nlow or nhigh:
        order = np.argsort(v, axis=0, kind="stable")  # NaN last, ties by frame index
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n)[:, None], order.shape), 0)
        m = valid.sum(axis=0)
        inwin = valid & (ranks >= nlow) & (ranks < m - nhigh)
    vw = np.where(inwin, v, np.nan)
    survive = inwin
    if sigma and npix:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, lo, hi = sigma_clip(
                vw,
                sigma_lower=sigma_low,
                sigma_upper=sigma_high,
                maxiters=None if maxiters < 0 else maxiters,
                cenfunc=center,
                stdfunc=dev,
                axis=0,
                masked=True,
                return_bounds=True,
                copy=False,
            )
            lo = np.where(np.isinf(sigma_low), -np.inf, lo)
            hi = np.where(np.isinf(sigma_high), np.inf, hi)
            survive = inwin & ~(vw < lo) & ~(vw > hi)
    ys = np.where(survive, y, np.nan)
    k = survive.sum(axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "median":
            image = np.nanmedian(ys, axis=0)
            uncert = mad_std(ys, axis=0, ignore_nan=True) / np.sqrt(k)
        else:
            sd = np.nanstd(ys, axis=0)
            if weight is None:
                total = np.nansum(ys, axis=0)
                image = total / k if method == "average" else total
            else:
                w = np.asarray(weight, np.float64)[:, None]
                total = np.nansum(ys * w, axis=0)
                image = (
                    total / np.sum(np.where(survive, w, 0), axis=0)
                    if method == "average"
                    else total
                )
            uncert = sd / np.sqrt(k) if method == "average" else sd * np.sqrt(k)
    image = np.where(k == 0, np.nan, image)
    uncert = np.where(k == 0, np.nan, uncert)
    if return_rejected:
        return image, uncert, k, (valid & ~survive).sum(axis=1)
    return image, uncert, k
