"""Header-only selection and grouping of flat frames."""

from __future__ import annotations

import glob
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits

from ._frames import ext_key, ext_label, is_image_hdu, merged_header

_CUT = re.compile(r"truncated|Error validating header")  # astropy's words for a cut file
FITS_SUFFIXES = (
    ".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fz", ".fits.gz", ".fit.gz", ".fts.gz",
)  # fmt: skip


@dataclass(frozen=True)
class FrameInfo:
    path: Path
    header: fits.Header = field(repr=False)
    shape: tuple[int, int]
    binning: tuple[int, int]
    # a mosaic (more than one 2-D image HDU): ((EXTNAME, EXTVER), HDU index, shape) of each
    # image HDU in file order; () for a single-image file
    extensions: tuple = ()
    # why the file cannot be read whole ("" when it can): astropy drops an HDU it cannot
    # read, so its shape and extensions are not to be trusted; it joins the group of its
    # header values, whose combination then fails naming it (or leaves it out, --skip-bad)
    broken: str = ""

    def get(self, key, default=""):
        return self.header.get(key, default)


@dataclass
class Group:
    key: tuple[str, ...]  # the group-by values
    shape: tuple[int, int]
    binning: tuple[int, int]
    frames: list[FrameInfo]
    split: bool = False  # another group shares the key but not the shape/binning
    mosaic: bool = False  # multi-extension files, combined extension by extension

    def label(self) -> str:
        text = ",".join(v if v != "" else "''" for v in self.key)
        if self.split:
            text += f" [{self.shape[0]}x{self.shape[1]} bin {self.binning[0]}x{self.binning[1]}"
            text += " mosaic]" if self.mosaic else "]"
        return text

    def product_name(self) -> str:
        name = "combined_flat_filter_" + "_".join(safe_name(v) for v in self.key)
        if self.split:
            name += f"_{self.shape[0]}x{self.shape[1]}_bin{self.binning[0]}x{self.binning[1]}"
            name += "_mosaic" if self.mosaic else ""
        return name + ".fits"


def safe_name(value: str) -> str:
    """A filesystem-safe rendering of a header value: the guide's ``replace("''", "p")``
    (g'' -> gp), then anything else outside [A-Za-z0-9.+-] becomes '_'."""
    text = str(value).replace("''", "p")
    text = re.sub(r"[^A-Za-z0-9.+-]", "_", text).strip(".")
    return text or "none"


def expand_inputs(items, *, recursive=False) -> tuple[list[Path], list[str]]:
    """Files from directories, files, globs and @list files; returns (paths, missing)."""
    paths, missing = [], []
    for item in items:
        if item.startswith("@"):
            listfile = Path(item[1:])
            if not listfile.is_file():
                missing.append(f"{item}: list file not found")
                continue
            lines = [ln.strip() for ln in listfile.read_text().splitlines()]
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            sub, miss = expand_inputs(
                [e if os.path.isabs(e) else str(listfile.parent / e) for e in entries],
                recursive=recursive,
            )
            paths += sub
            missing += miss
        elif os.path.isdir(item):
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p for p in Path(item).glob(pattern) if p.is_file() and _is_fits_name(p.name)
            )
            paths += found
        elif os.path.isfile(item):
            paths.append(Path(item))
        elif glob.has_magic(item):
            found = sorted(
                Path(p) for p in glob.glob(item, recursive=recursive) if os.path.isfile(p)
            )
            if not found:
                missing.append(f"{item}: no file matches")
            paths += found
        else:
            missing.append(f"{item}: no such file or directory")
    seen, unique = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, missing


def _is_fits_name(name):
    return name.lower().endswith(FITS_SUFFIXES)


def read_info(path: Path) -> FrameInfo:
    """Header, shape and binning of the first image HDU (no data read); for a mosaic (more
    than one 2-D image HDU) also every image HDU's (EXTNAME, EXTVER), index and shape."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded, not shown: headers often have quirks
        with fits.open(path, memmap=False) as hdul:
            images = [(i, h) for i, h in enumerate(hdul) if is_image_hdu(h)]
            cut = [str(w.message) for w in caught if _CUT.search(str(w.message))]
            broken = f"truncated or corrupt ({cut[0].splitlines()[0]})" if cut else ""
            if not images:
                raise ValueError("no 2-D image HDU")
            first, h = images[0]
            header = h.header.copy()
            # a primary header's keywords apply to a compressed or extension image too
            if first != 0:
                header = merged_header(header, hdul[0].header)
            shape = tuple(int(s) for s in h.shape)
            extensions = ()
            if len(images) > 1:
                extensions = tuple(
                    (ext_key(h, i), i, tuple(int(s) for s in h.shape)) for i, h in images
                )
                keys = [e[0] for e in extensions]
                for key in keys:
                    if keys.count(key) > 1:
                        raise ValueError(
                            f"{keys.count(key)} image extensions are named {ext_label(key)}"
                        )
    binning = _binning(header)
    return FrameInfo(Path(path), header, shape, binning, extensions, broken)


def _binning(header):
    if "CCDSUM" in header:
        parts = str(header["CCDSUM"]).split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    return int(header.get("XBINNING", 1) or 1), int(header.get("YBINNING", 1) or 1)


def is_selected(info: FrameInfo, *, imagetyp=(), where=()) -> bool:
    """Default: IMAGETYP contains 'flat' (any case). ``imagetyp``: exact values (any case).
    ``where``: (KEY, VALUE) pairs that must match (numbers numerically, text in any case)."""
    value = str(info.get("IMAGETYP", "")).strip()
    if imagetyp:
        if value.lower() not in {v.strip().lower() for v in imagetyp}:
            return False
    elif "flat" not in value.lower():
        return False
    return all(_matches(info.get(key, None), wanted) for key, wanted in where)


def _matches(actual, wanted: str) -> bool:
    if actual is None:
        return False
    try:
        return float(actual) == float(wanted)
    except (TypeError, ValueError):
        return str(actual).strip().lower() == wanted.strip().lower()


def group_frames(infos, group_by=("FILTER",)) -> list[Group]:
    """Group by the header keys; frames of different shape or binning are never mixed."""
    groups: dict[tuple, Group] = {}
    broken = [i for i in infos if i.broken]
    for info in (i for i in infos if not i.broken):
        key = tuple(str(info.get(k, "")).strip() for k in group_by)
        mosaic = bool(info.extensions)
        full = (key, info.shape, info.binning, mosaic)
        if full not in groups:
            groups[full] = Group(key, info.shape, info.binning, [], mosaic=mosaic)
        groups[full].frames.append(info)
    for info in broken:  # into the first group of its header values, else one of its own
        key = tuple(str(info.get(k, "")).strip() for k in group_by)
        same = [g for g in groups.values() if g.key == key]
        if same:
            same[0].frames.append(info)
        else:
            groups[(key, info.shape, info.binning, False)] = Group(
                key, info.shape, info.binning, [info]
            )
    out = list(groups.values())
    for g in out:
        g.split = sum(1 for h in out if h.key == g.key) > 1
    return sorted(out, key=lambda g: (g.key, g.shape, g.binning, g.mosaic))
