"""Header-only selection and grouping of flat frames."""

from __future__ import annotations

import difflib
import glob
import os
import re
import warnings
from collections import Counter
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
    # another group shares the key but not the shape/binning, and has more frames (or as
    # many): this group's name and label say its shape and binning
    split: bool = False
    mosaic: bool = False  # multi-extension files, combined extension by extension
    # frames of the group left out while planning (unreadable, with --skip-bad)
    skipped: list[FrameInfo] = field(default_factory=list)

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
    """Files from directories, files, globs and @list files; returns (paths, missing).

    An @list file holds one entry per line (a file, directory or glob; blank lines and
    lines starting with # are ignored). Relative entries are relative to the current
    folder, as IRAF's @lists and ``tar -T`` read them, not to the list file's folder: an
    entry found only there is missing, with a hint."""
    paths, missing = [], []
    for item in items:
        if item.startswith("@"):
            listfile = Path(item[1:])
            if not listfile.is_file():
                missing.append(f"{item}: list file not found")
                continue
            lines = [ln.strip() for ln in listfile.read_text().splitlines()]
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            sub, miss = expand_inputs(entries, recursive=recursive)
            paths += sub
            missing += [_list_hint(item, listfile, m) for m in miss]
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


def _list_hint(item, listfile, why):
    """An @list entry's 'missing' line, saying where the entry is when it is relative to the
    list file's folder rather than the current one."""
    entry = why.rsplit(": ", 1)[0]
    text = f"{item}: {why}"
    beside = listfile.parent / entry
    if not os.path.isabs(entry) and (beside.exists() or glob.glob(str(beside))):
        text += (
            f" (relative to the current folder: @list entries are; {beside} exists, "
            f"relative to the list file's folder)"
        )
    return text


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


def is_product(info: FrameInfo) -> bool:
    """Whether the file is a combined master, never an input: ``COMBINED = T`` (the guide's
    and ccdproc's mark, which gpuflat's products carry too) or gpuflat's provenance
    (``GPF_VERS``, see ``_products.product_header``)."""
    combined = info.header.get("COMBINED", False)
    marked = combined is True or str(combined).strip().upper() in ("T", "TRUE")
    return marked or "GPF_VERS" in info.header


def type_matches(info: FrameInfo, *, imagetyp=(), imagetyp_key="IMAGETYP") -> bool:
    """Default: the ``imagetyp_key`` keyword (IMAGETYP) contains 'flat' (any case).
    ``imagetyp``: exact values (any case)."""
    value = str(info.get(imagetyp_key, "")).strip()
    if imagetyp:
        return value.lower() in {v.strip().lower() for v in imagetyp}
    return "flat" in value.lower()


def is_selected(info: FrameInfo, *, imagetyp=(), where=(), imagetyp_key="IMAGETYP") -> bool:
    """``type_matches``, and ``where``: (KEY, VALUE) pairs that must match (numbers
    numerically, text in any case)."""
    if not type_matches(info, imagetyp=imagetyp, imagetyp_key=imagetyp_key):
        return False
    return where_matches(info, where)


def where_matches(info: FrameInfo, where) -> bool:
    """``where``: (KEY, VALUE) pairs that all match (numbers numerically, text in any case)."""
    return all(_matches(info.get(key, None), wanted) for key, wanted in where)


def type_counts(infos, imagetyp_key="IMAGETYP") -> str:
    """The values of the image type keyword among ``infos``, most frequent first:
    ``'BIAS' x5, 'LIGHT' x7, (no IMAGETYP) x2``."""
    counts = Counter(
        repr(str(i.get(imagetyp_key)).strip()) if imagetyp_key in i.header
        else f"(no {imagetyp_key})"
        for i in infos
    )  # fmt: skip
    return ", ".join(f"{v} x{n}" for v, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))


#: keywords that name the same thing under other names on some cameras: the filter
#: (FILTER1, FILTNAME, INSFLNAM, NOT/ALFOSC's FAFLTNM...), the image type (OBSTYPE...)
_FAMILIES = {
    "FILTER": re.compile(r"FILT|FLT|FLNAM"),
    "IMAGETYP": re.compile(r"TYP"),
}


def similar_keys(infos, key: str, limit: int = 6) -> list[str]:
    """The header keys of ``infos`` that look like ``key`` (a key that is missing): those
    sharing its first four letters or its family's words (``_FAMILIES``: FILT, FLT, ...),
    or close to it by spelling; each as ``KEY (N frames: 'v1', 'v2', ...)``, the most
    common first."""
    found: dict[str, list] = {}
    for info in infos:
        for k in info.header:
            if k and k not in ("COMMENT", "HISTORY"):
                found.setdefault(k, []).append(info.header[k])
    # the family of the key, or of the family's name it is a misspelling of (FILTR)
    named = difflib.get_close_matches(key, list(_FAMILIES), n=1, cutoff=0.7)
    family = _FAMILIES[named[0]] if named else None
    stem = key[:4]
    close = set(difflib.get_close_matches(key, list(found), n=limit, cutoff=0.6))
    like = [
        k for k in found
        if k != key and (k in close or stem in k or (family is not None and family.search(k)))
    ]  # fmt: skip
    counts = {k: Counter(str(v).strip() for v in found[k]) for k in like}
    # keys whose values tell the frames apart first, then the most common
    like.sort(key=lambda k: (len(counts[k]) < 2, -len(found[k]), k))
    out = []
    for k in like[:limit]:
        values = [v for v, _ in counts[k].most_common()]
        shown = ", ".join(repr(v) for v in values[:4]) + (", ..." if len(values) > 4 else "")
        out.append(f"{k} ({len(found[k])} frame{'s' if len(found[k]) != 1 else ''}: {shown})")
    return out


def split_by_keys(infos, keys, *, allow_missing=False):
    """Check the group keys against the selected frames: returns (kept, left out) where
    left out lists (frame, the keys it lacks) of the frames without a key that other frames
    have (kept as they are, their own group with '' for the key, with ``allow_missing``).
    A key that no frame has raises ``KeyError(key)`` (the caller says which keys look like
    it: :func:`similar_keys`)."""
    for key in keys:
        if infos and not any(key in i.header for i in infos):
            raise KeyError(key)
    kept, left_out = [], []
    for info in infos:
        lacks = [k for k in keys if k not in info.header]
        if lacks and not allow_missing:
            left_out.append((info, lacks))
        else:
            kept.append(info)
    return kept, left_out


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
        # another group shares the key: the minority's product name and label say its
        # shape and binning (a stray frame never renames the real master); on a tie, both
        same = [h for h in out if h.key == g.key]
        most = max(len(h.frames) for h in same)
        g.split = len(same) > 1 and (
            len(g.frames) < most or sum(len(h.frames) == most for h in same) > 1
        )
    return sorted(out, key=lambda g: (g.key, g.shape, g.binning, g.mosaic))


def name_clashes(groups) -> list[list[Group]]:
    """The groups that would write one product name (each clash: two groups or more)."""
    by_name: dict[str, list[Group]] = {}
    for g in groups:
        by_name.setdefault(g.product_name(), []).append(g)
    return [gs for gs in by_name.values() if len(gs) > 1]
