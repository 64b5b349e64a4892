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

__all__ = ["plot_flat", "plot_levels", "plot_scaled_vs_unscaled"]

#: Figure sizes in inches and resolution; the PNGs are exactly ``size * DPI`` pixels.
DPI = 100
LEVELS_SIZE = (8.0, 4.5)
FLAT_SIZE = (7.0, 5.5)
PAIR_SIZE = (13.0, 5.5)

_MAX_DISPLAY = 2048  # larger images are subsampled by a stride for display
_BAD_COLOUR = "red"  # NaN / infinite pixels


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


def plot_levels(path, names, medians, means, *, title) -> None:
    """Plot the median and mean level of every frame against its index and write a PNG.

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
    fig = _new_figure(LEVELS_SIZE)
    ax = fig.add_subplot()
    index = np.arange(len(names))
    ax.plot(index, medians, "o", markersize=7, label="median")
    ax.plot(index, means, "s", markersize=7, fillstyle="none", label="mean")
    ax.set_xlabel("Frame index")
    ax.set_ylabel("Frame level (counts)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if 0 < len(names) <= 30:
        ax.set_xticks(index)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize="small")
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
        larger than 2048 pixels on a side are subsampled for display.
    title : str
        Axes title; the median and robust scatter of the image are appended below it.
    """
    arr = _as_image(image)
    vmin, vmax = _zscale_limits(arr)
    med, std = _robust_stats(arr)
    fig = _new_figure(FLAT_SIZE)
    ax = fig.add_subplot()
    _show(fig, ax, arr, vmin, vmax, label="value (ZScale, linear)")
    ax.set_title(
        f"{title}\nmedian {med:.6g}, robust std {std:.3g}, "
        f"pixel-to-pixel scatter {_pixel_scatter(arr):.3g}",
        fontsize="medium",
    )
    _save_atomic(fig, path)


def plot_scaled_vs_unscaled(path, scaled, unscaled, *, title) -> None:
    """Show flats combined with and without scaling side by side, and write a PNG.

    The guide's "bad combined flat": frames whose levels differ (the darkening twilight sky)
    must be scaled to a common level before they are combined. Each panel is divided by its own
    median and both are drawn with the same display range (the ZScale limits of the scaled
    flat), so the difference in structure and noise is visible directly.

    Parameters
    ----------
    path : str or os.PathLike
        Output PNG file (``PAIR_SIZE * DPI`` pixels), replaced atomically.
    scaled, unscaled : array_like
        2-D combined flats, made with and without scaling the inputs. Non-finite pixels are
        drawn in red and ignored by the statistics.
    title : str
        Figure title.
    """
    a = _as_image(scaled)
    b = _as_image(unscaled)
    panels = []
    for arr in (a, b):
        med, _ = _robust_stats(arr)
        norm = arr / med if np.isfinite(med) and med != 0 else arr
        panels.append((norm, _pixel_scatter(norm)))
    vmin, vmax = _zscale_limits(panels[0][0])

    fig = _new_figure(PAIR_SIZE)
    fig.suptitle(title)
    texts = (
        "Scaled: every frame divided by its level first,\n"
        "so clipping rejects only stars and cosmic rays",
        "Unscaled: frames at different levels combined as they are,\n"
        "so clipping acts on the level differences, not on stars and cosmic rays",
    )
    for i, ((norm, scatter), text) in enumerate(zip(panels, texts, strict=True)):
        ax = fig.add_subplot(1, 2, i + 1)
        _show(fig, ax, norm, vmin, vmax, label="value / median (same range both panels)")
        ax.set_title(f"{text}\npixel-to-pixel scatter {scatter:.3g}", fontsize="medium")
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
