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
    ccdclip=False,
    rdnoise=None,
    gain=None,
    snoise=None,
    nkeep=0,
    return_rejected=False,
    return_survivors=False,
):
    """Combine ``data[n, npix]``; returns (image, uncertainty, count), and with
    ``return_rejected`` also the per-frame number of valid samples that did not survive,
    with ``return_survivors`` (after it) the survivors (bool [n, npix]).

    ``ccdclip`` (with ``sigma``): per-frame widths from the noise model (``rdnoise``,
    ``gain``, ``snoise``: one value per frame); ``nkeep``: IRAF's nkeep on the clipping.
    Those two go through this module's own clipping loop instead of astropy's."""
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
    if sigma and npix and (ccdclip or nkeep):
        survive = _clip_nkeep(
            v, inwin, np.ones(n) if not clip_scaled else scale, ccdclip, rdnoise, gain, snoise,
            nkeep, center, dev, sigma_low, sigma_high, maxiters,
        )  # fmt: skip
    elif sigma and npix:
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
    out = (image, uncert, k)
    if return_rejected:
        out += ((valid & ~survive).sum(axis=1),)
    if return_survivors:
        out += (survive,)
    return out


def _noise_sigma(c, sc, rdnoise, gain, snoise):
    """Each frame's width (rows) at centres ``c`` (columns), IRAF's ccdclip noise model in
    the frame's raw units, carried back through its scale ``sc``."""
    col = [np.asarray(a, np.float64).reshape(-1, 1) for a in (sc, rdnoise, gain, snoise)]
    sc, rd, g, sn = col
    raw = c[None, :] / sc
    raw = np.where(raw > 0, raw, 0.0)
    return np.sqrt((rd / g) ** 2 + raw / g + (raw * sn) ** 2) * sc


def _clip_nkeep(v, inwin, sc, ccdclip, rdnoise, gain, snoise, nkeep, center, dev, sigma_low,
                sigma_high, maxiters):  # fmt: skip
    """The survivors of the clipping (sigma or ccdclip, astropy's iteration: narrow the
    alive set until it stops changing, then the final bounds on the whole window), then
    nkeep's restore of the clipped frames closest to the centre."""
    n, npix = v.shape
    alive = inwin.copy()
    k = alive.sum(axis=0)
    active = k > 0
    c = np.zeros(npix)
    lo = np.full((1, npix), -np.inf)
    hi = np.full((1, npix), np.inf)
    it = 0
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        while active.any() and (maxiters < 0 or it < maxiters):
            it += 1
            vals = np.where(alive, v, np.nan)
            cn = np.nanmedian(vals, axis=0) if center == "median" else np.nanmean(vals, axis=0)
            if ccdclip:
                d = _noise_sigma(cn, sc, rdnoise, gain, snoise)
            elif dev == "mad_std":
                d = mad_std(vals, axis=0, ignore_nan=True)[None, :]
            else:
                d = np.nanstd(vals, axis=0)[None, :]
            lon = np.broadcast_to(-np.inf if np.isinf(sigma_low) else cn - sigma_low * d, v.shape)
            hin = np.broadcast_to(np.inf if np.isinf(sigma_high) else cn + sigma_high * d, v.shape)
            new = alive & ~(v < lon) & ~(v > hin)
            k2 = new.sum(axis=0)
            c = np.where(active, cn, c)
            lo = np.where(active, lon, lo)
            hi = np.where(active, hin, hi)
            alive = np.where(active, new, alive)
            active = active & (k2 != k) & (k2 > 0)
            k = alive.sum(axis=0)
        survive = inwin & ~(v < lo) & ~(v > hi)
        if nkeep:
            kw = inwin.sum(axis=0)
            keep = np.minimum(nkeep, kw) if nkeep > 0 else np.maximum(0, kw + nkeep)
            need = keep - survive.sum(axis=0)
            cand = inwin & ~survive
            e = np.abs(v - c[None, :])
            if ccdclip:
                e = np.where(e != 0, e / _noise_sigma(c, sc, rdnoise, gain, snoise), 0.0)
            e = np.where(cand, e, np.inf)
            frame = np.broadcast_to(np.arange(n)[:, None], v.shape)
            order = np.lexsort((frame.T, e.T, ~cand.T))  # per pixel: candidates, nearest first
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(n)[None, :], axis=1)
            survive = survive | (cand & (need[None, :] > rank.T))
    return survive
