"""Diagnostic PNG plots in the style of the astropy CCD reduction guide's flat-combination notebook.

matplotlib and astropy.visualization are imported inside the functions so that ``import gpuflat``
stays light. The figures are drawn with the Agg canvas directly (no :mod:`matplotlib.pyplot`),
so the caller's pyplot state and interactive backend are never touched and no figure is left
registered anywhere. Every PNG is written atomically: to a temporary name in the target
directory, then moved into place (:func:`gpuflat._atomic.commit`).
"""

from __future__ import annotations

import numpy as np

from ._atomic import commit

__all__ = ["plot_flat", "plot_frame_mask", "plot_levels", "plot_mask", "plot_scaling"]

#: Figure sizes in inches and resolution; the PNGs are exactly ``size * DPI`` pixels.
DPI = 100
LEVELS_SIZE = (8.0, 4.5)
FLAT_SIZE = (7.0, 5.5)
MASK_SIZE = (13.0, 5.5)  # gpuflat mask: the ratio and its histogram side by side

_MAX_DISPLAY = 800  # larger images are subsampled by a stride for display (the axes are
# about 500 pixels wide: more only costs resampling)
_BAD_COLOUR = "red"  # NaN / infinite pixels
_STATS_PIXELS = 2**20  # the flat's title statistics: from every k-th row, about this many


def load() -> None:
    """Import the modules the plots draw with and draw a small figure once, which loads
    the fonts (a caller may do it ahead, on another thread)."""
    from astropy.visualization import ImageNormalize, ZScaleInterval  # noqa: F401

    fig = _new_figure((1.0, 1.0))
    fig.add_subplot().set_title("gpuflat")
    fig.canvas.draw()


def _new_figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig, path) -> None:
    try:
        commit(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI), overwrite=True)
    finally:
        fig.clear()


def _as_image(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _display_view(arr: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A stride-subsampled view for display and the extent that keeps pixel coordinates."""
    ny, nx = arr.shape
    step = max(1, int(np.ceil(max(ny, nx) / _MAX_DISPLAY)))
    extent = (-0.5, nx - 0.5, -0.5, ny - 0.5)
    return arr[::step, ::step], extent


def _finite(arr: np.ndarray) -> np.ndarray:
    vals = arr[np.isfinite(arr)]
    return vals


def _zscale_limits(arr: np.ndarray) -> tuple[float, float]:
    """ZScale display limits from the finite pixels, widened if degenerate."""
    from astropy.visualization import ZScaleInterval

    vals = _finite(arr)
    if vals.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in ZScaleInterval().get_limits(vals))
    if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmin >= vmax:
        lo, hi = float(vals.min()), float(vals.max())
        if lo < hi:
            return lo, hi
        pad = max(abs(lo) * 1e-3, 1e-12)
        return lo - pad, lo + pad
    return vmin, vmax


def _rows_sample(arr: np.ndarray) -> np.ndarray:
    """Every k-th row, about ``_STATS_PIXELS`` pixels in all: the titles' statistics to
    three digits at a quarter of the cost on a 2048^2 flat (whole rows, for the scatter
    along x)."""
    return arr[:: max(1, -(-arr.size // _STATS_PIXELS))]


def _robust_stats(arr: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation of the finite pixels (NaN if none)."""
    vals = _finite(arr)
    if vals.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(vals))
    return med, 1.4826 * float(np.median(np.abs(vals - med)))


def _pixel_scatter(arr: np.ndarray) -> float:
    """Robust pixel-to-pixel scatter: MAD-based std of neighbour differences along x / sqrt 2.

    Insensitive to large-scale structure (vignetting, level), so it measures noise, pixel
    response and leftover stars or cosmic rays.
    """
    if arr.shape[1] < 2:
        return float("nan")
    _, std = _robust_stats(np.diff(arr, axis=1))
    return std / np.sqrt(2.0)


def _show(fig, ax, arr, vmin, vmax, *, label):
    from astropy.visualization import ImageNormalize, LinearStretch
    from matplotlib import colormaps

    view, extent = _display_view(arr)
    cmap = colormaps["gray"].with_extremes(bad=_BAD_COLOUR)
    norm = ImageNormalize(vmin=vmin, vmax=vmax, stretch=LinearStretch(), clip=False)
    im = ax.imshow(
        np.ma.masked_invalid(view),
        origin="lower",
        cmap=cmap,
        norm=norm,
        extent=extent,
        interpolation="nearest",
    )
    ax.set_xlabel("x (pixel)")
    ax.set_ylabel("y (pixel)")
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.set_label(label)
    return im


def plot_levels(path, names, medians, means, *, title, left_out=None) -> None:
    """Plot the median and mean level of every frame, in the order of the group, and write
    a PNG; the frames QA left out are marked, with why.

    This is the guide's check of how the flat level changes through a sequence (lamp drift in
    dome flats, the darkening sky in twilight flats), the reason the frames must be scaled to a
    common level before they are combined.

    Parameters
    ----------
    path : str or os.PathLike
        Output PNG file (``LEVELS_SIZE * DPI`` pixels), replaced atomically.
    names : sequence of str
        Frame names, used as tick labels when there are at most 30 frames.
    medians, means : sequence of float
        Per-frame median and mean levels, same length as ``names``; NaN values are left out
        of the plot.
    title : str
        Axes title.
    left_out : dict, optional
        ``{index: why}`` of the frames left out of the combination (drawn as red crosses,
        the reasons listed under the axes).

    Raises
    ------
    ValueError
        If the three sequences differ in length.
    """
    names = [str(n) for n in names]
    medians = np.asarray(medians, dtype=np.float64).reshape(-1)
    means = np.asarray(means, dtype=np.float64).reshape(-1)
    if not (len(names) == medians.size == means.size):
        raise ValueError(
            f"names, medians and means differ in length: {len(names)}, {medians.size}, {means.size}"
        )
    left_out = dict(left_out or {})
    fig = _new_figure(LEVELS_SIZE)
    ax = fig.add_subplot()
    index = np.arange(len(names))
    ax.plot(index, medians, "o", markersize=7, label="median")
    ax.plot(index, means, "s", markersize=7, fillstyle="none", label="mean")
    if left_out:
        out = np.array(sorted(left_out))
        ax.plot(out, medians[out], "x", color="red", markersize=12, mew=2, label="left out")
        why = "; ".join(f"{names[k]}: {left_out[k]}" for k in sorted(left_out))
        fig.text(0.01, 0.005, f"left out: {why}"[:200], fontsize="x-small", color="red")
    ax.set_ylabel("frame level (counts)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if 0 < len(names) <= 30:
        ax.set_xlabel("frame (in the group's order)")
        ax.set_xticks(index)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize="small")
    else:
        ax.set_xlabel("frame number in the group (0 = first)")
    if len(names):
        ax.set_xlim(-0.5, len(names) - 0.5)
    ax.legend(loc="best")
    _save_atomic(fig, path)


def plot_flat(path, image, *, title) -> None:
    """Show a combined flat with a ZScale linear stretch and a colourbar, and write a PNG.

    Parameters
    ----------
    path : str or os.PathLike
        Output PNG file (``FLAT_SIZE * DPI`` pixels), replaced atomically.
    image : array_like
        2-D image. Non-finite pixels are drawn in red and ignored by the stretch; images
        larger than 800 pixels on a side are subsampled (by a stride) for display.
    title : str
        Axes title; the median and robust scatter of the image (from every k-th row,
        about a million pixels) are appended below it.
    """
    arr = _as_image(image)
    vmin, vmax = _zscale_limits(arr)
    sample = _rows_sample(arr)
    med, std = _robust_stats(sample)
    fig = _new_figure(FLAT_SIZE)
    ax = fig.add_subplot()
    _show(fig, ax, arr, vmin, vmax, label="value (ZScale, linear)")
    ax.set_title(
        f"{title}\nmedian {med:.5g}, robust std {std:.3g}, "
        f"pixel-to-pixel scatter {_pixel_scatter(sample):.3g}",
        fontsize="medium",
    )
    _save_atomic(fig, path)


def plot_scaling(path, levels, scales, *, title) -> None:
    """What scaling does to the frames' levels, before and after, on one axis; writes a PNG.

    The guide scales every frame to a common level before combining, because the levels
    drift (a lamp) or fall several-fold (the twilight sky), and clipping across frames at
    different levels would act on the level differences, not on stars and cosmic rays.
    Before: each frame's level over the group's median level; after: the same for the
    level times the frame's scale factor (a flat line at 1 for ``--scale median``).

    Parameters
    ----------
    path : str or os.PathLike
        Output PNG file (``LEVELS_SIZE * DPI`` pixels), replaced atomically.
    levels, scales : sequence of float
        Per-frame level (median) and scale factor of the frames combined, in order.
    title : str
        Axes title.
    """
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if levels.size != scales.size:
        raise ValueError(f"levels and scales differ in length: {levels.size}, {scales.size}")
    fig = _new_figure(LEVELS_SIZE)
    ax = fig.add_subplot()
    index = np.arange(levels.size)
    for values, marker, label in ((levels, "o-", "before scaling"),
                                  (levels * scales, "s-", "after scaling")):  # fmt: skip
        centre = np.nanmedian(values) if np.isfinite(values).any() else np.nan
        spread = np.nanmax(values) / np.nanmin(values) if np.isfinite(values).any() else np.nan
        ax.plot(index, values / centre, marker, markersize=6,
                label=f"{label} (max/min {spread:.3g})")  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("frame number in the group (0 = first)")
    ax.set_ylabel("frame level / the group's median level")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    _save_atomic(fig, path)


def plot_frame_mask(path, frame, mask, *, title) -> None:
    """Show one frame with its mask from the mask pass over it (sources, grown, and
    saturated pixels, in translucent red), and write a PNG.

    Parameters
    ----------
    path : str or os.PathLike
        Output PNG file (``FLAT_SIZE * DPI`` pixels), replaced atomically.
    frame : str or os.PathLike
        The frame's FITS file (its first image, as stored); when its shape is not the
        mask's (a trimmed calibration), the mask is shown alone.
    mask : array_like of bool
        2-D mask, True where the frame's pixels were left out.
    title : str
        Axes title; the masked fraction is appended below it.
    """
    from astropy.io import fits

    m = np.asarray(mask, bool)
    with fits.open(frame, memmap=False) as hdul:
        hdu = next((h for h in hdul if h.is_image and h.data is not None), None)
        data = None if hdu is None else _as_image(hdu.data)
    fig = _new_figure(FLAT_SIZE)
    ax = fig.add_subplot()
    if data is not None and data.shape == m.shape:
        vmin, vmax = _zscale_limits(data)
        _show(fig, ax, data, vmin, vmax, label="value as stored (ZScale, linear)")
    view, extent = _display_view(m)
    overlay = np.zeros((*view.shape, 4))
    overlay[view] = (1.0, 0.0, 0.0, 0.45)
    ax.imshow(overlay, origin="lower", extent=extent, interpolation="nearest")
    ax.set_title(f"{title}\nmasked (red): {100 * m.mean():.3g}% of the pixels", fontsize="medium")
    _save_atomic(fig, path)


def plot_mask(path, ratio, mask, *, lsigma, hsigma, title) -> None:
    """The ratio with its masked pixels marked, beside a histogram of the ratio with the
    clipping bounds, and write a PNG (``MASK_SIZE * DPI`` pixels, replaced atomically).

    ccdmask's sigma is local (half the spread between the 30.9th and 69.1st percentiles of
    the median-subtracted ratio around each pixel); the histogram shows the bounds
    ``median - lsigma * sigma`` and ``median + hsigma * sigma`` with that sigma taken over
    the whole image, the typical bounds."""
    arr = _as_image(ratio)
    bad = np.asarray(mask).astype(bool)
    vmin, vmax = _zscale_limits(arr)
    vals = _finite(arr)
    med = float(np.median(vals)) if vals.size else float("nan")
    lo_p, hi_p = np.percentile(vals, [30.9, 69.1]) if vals.size else (np.nan, np.nan)
    sigma = (hi_p - lo_p) / 2.0
    low, high = med - lsigma * sigma, med + hsigma * sigma

    fig = _new_figure(MASK_SIZE)
    fig.suptitle(f"{title}: {int(bad.sum())} of {bad.size} pixels masked "
                 f"({100.0 * bad.mean():.3g}%)")  # fmt: skip
    ax = fig.add_subplot(1, 2, 1)
    _show(fig, ax, arr, vmin, vmax, label="ratio (ZScale, linear)")
    rows, cols = np.nonzero(bad)
    if rows.size:
        ax.scatter(cols, rows, s=4, marker="s", facecolors="none", edgecolors="red",
                   linewidths=0.6, label="masked")  # fmt: skip
        ax.legend(loc="upper right", fontsize="small")
    ax.set_title("ratio, masked pixels in red", fontsize="medium")
    ax = fig.add_subplot(1, 2, 2)
    if vals.size:
        span = max(high - low, 1e-12)
        edges = np.linspace(low - span, high + span, 201)
        ax.hist(np.clip(vals, edges[0], edges[-1]), bins=edges, color="0.4", log=True)
        for x, name in ((low, f"-{lsigma:g} sigma"), (high, f"+{hsigma:g} sigma")):
            ax.axvline(x, color="red", linestyle="--", label=f"{name}: {x:.5g}")
        ax.axvline(med, color="black", linewidth=0.8, label=f"median {med:.5g}")
        ax.legend(fontsize="small")
    ax.set_xlabel("ratio (values outside the axis piled at its ends)")
    ax.set_ylabel("pixels")
    ax.set_title(f"histogram; sigma {sigma:.3g} from the 30.9/69.1 percentiles",
                 fontsize="medium")  # fmt: skip
    _save_atomic(fig, path)
