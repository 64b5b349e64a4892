"""Side-by-side benchmark: ``gpuflat run`` against IRAF, the astropy CCD guide's ccdproc
code, astropy's fast path and the I/O floor, on simulated data. ``make bench`` (``--quick``
for a tiny run, as the tests do).

Workloads (simulated once, cached in ``bench/cache``; each is one directory of raw frames,
bias, dark and light frames included):

* W1: 15 x 2048 x 2048 float32 twilight flats of one filter; W2: 20 x 4096 x 4096 uint16
  (BZERO); W3: 40 x 4096 x 4096 float32, streamed under 350 MB; M1: mosaics (5 exposures in
  each of 3 filters, 4 detectors of 1024 x 1024);
* N1: a night, 6 filters x 12 x 2048 x 2048 float32 twilight flats in one directory.

Contenders, every one a fresh process, timed from outside: wall time of the whole process,
interpreter start-up and imports included.

* ``gpuflat_run``: the ``gpuflat run DIR`` console command, end to end (selection, products
  written, checksummed, verified, frame QA on). The baseline: every ``ratio`` is
  "contender time / gpuflat_run time", so 3.0 reads "gpuflat run is 3x faster";
* ``gpuflat``: the library call ``gpuflat.combine(paths)`` on each group (single groups);
* ``iraf_avsigclip``, ``iraf_sigclip``: IRAF ``imcombine`` with the guide's parameters as
  IRAF spells them (``combine=average scale=median reject=avsigclip|sigclip mclip=yes
  lsigma=5 hsigma=5``), for single groups;
* ``iraf_flatcombine``: IRAF ``noao.imred.ccdred.flatcombine`` over the whole night
  directory (``ccdtype=flat subsets=yes process=no``, an instrument file maps ``subset`` to
  ``FILTER``), the same combination parameters;
* ``ccdproc``: the guide's code: ``ImageFileCollection(DIR).files_filtered(imagetyp='FLAT',
  filter=f)`` for every filter, ``ccdproc.combine`` with the guide's arguments, ``write``;
* ``astropy``: ``sigma_clip`` on the whole stack of each group (single groups), also the
  reference for agreement (run once, untimed, where it is not a contender);
* ``io_floor``: read every flat into a float32 array (single groups);
* ``workers_1``, ``workers_2``: ``gpuflat run --workers N`` (mosaics only).

IRAF takes part when ``irafcl`` is on PATH (or ``GPUFLAT_BENCH_IRAFCL`` names a command that
runs a CL script read from its standard input the way Debian's ``irafcl`` does). On Debian
and Ubuntu::

    sudo apt-get install iraf iraf-noao

``irafcl`` needs no ``mkiraf``: it keeps its ``login.cl`` and ``uparm`` in ``$HOME/.iraf``,
so the bench runs it with ``HOME=bench/cache/iraf-home`` (set up once, untimed), ``USER``
and ``TERM=dumb`` set, the script on standard input, ``unlearn`` first so nothing left in
``uparm`` changes a parameter. IRAF is single-threaded.

Method: the inputs are read once, gpuflat's modules byte-compiled (as a wheel install
does) and ``gpuflat run`` is run once before timing (page cache warm, numba's cache
compiled); each contender's output
folder is emptied and ``sync`` called before it starts, so no one pays for another's dirty
pages; contenders alternate within each repeat and the order rotates between repeats. Peak
RSS is the child's own maximum resident set as ``/usr/bin/time -f %M`` reports it
(``os.wait4``'s ``ru_maxrss`` is not used: for a child started from this driver it carries
the driver's own peak). Agreement: every product is read back and compared per filter with
the astropy reference (maximum and 99.9th percentile of the relative difference, over pixels
finite in both). IRAF scales to the level of its first frame (imcombine) or to the mean level
(flatcombine), not to 1, so its images are first multiplied by one factor, the ratio of the
medians; its avsigclip/sigclip estimate the width differently from the guide's MAD, so its
numbers differ: agreement is reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TIME = "/usr/bin/time"  # GNU time: the child's own peak RSS
DEVICE = os.environ.get("GPUFLAT_BENCH_DEVICE", "cpu")
NIGHT_FILTERS = ("U", "B", "V", "R", "I", "Ha")


@dataclass(frozen=True)
class Workload:
    frames: int  # per group
    rows: int
    cols: int
    dtype: str = "float32"
    detectors: int = 0  # > 0: mosaics of this many extensions, three filters
    filters: int = 1  # > 1: a night of this many filters of `frames` flats each
    mem_limit: float = 350e6


WORKLOADS = {
    "W1": Workload(15, 2048, 2048),
    "W2": Workload(20, 4096, 4096, "uint16"),
    "W3": Workload(40, 4096, 4096),
    "N1": Workload(12, 2048, 2048, filters=6),
    "M1": Workload(5, 1024, 1024, detectors=4),
    "tiny": Workload(5, 64, 48),
    "tiny_night": Workload(4, 64, 48, filters=3),
}
SINGLE = ("gpuflat_run", "gpuflat", "iraf_avsigclip", "iraf_sigclip", "ccdproc", "astropy",
          "io_floor")  # fmt: skip
NIGHT = ("gpuflat_run", "iraf_flatcombine", "ccdproc")
MOSAIC = ("gpuflat_run", "workers_1", "workers_2")
BASELINE = "gpuflat_run"


def default_contenders(w: Workload) -> tuple[str, ...]:
    return MOSAIC if w.detectors else NIGHT if w.filters > 1 else SINGLE


# -- workloads -----------------------------------------------------------------------------


def make_workload(name, cache: Path) -> Path:
    """The workload's directory, simulated with ``gpuflat simulate`` on first use."""
    from gpuflat._simulate import simulate_night

    w = WORKLOADS[name]
    d = cache / f"{name}-{w.filters}x{w.frames}x{w.rows}x{w.cols}-{w.dtype}"
    if w.detectors:
        d = d.with_name(d.name + f"-mef{w.detectors}")
    marker = d / ".complete"
    if marker.exists():
        return d
    shutil.rmtree(d, ignore_errors=True)
    common = dict(shape=(w.rows, w.cols), dtype=w.dtype, overwrite=True, mef=w.detectors)
    if w.filters == 1:  # one filter of twilight flats (mosaics: also two of dome flats)
        simulate_night(d, n_dome=w.frames if w.detectors else 0, n_twilight=w.frames, seed=1,
                       **common)  # fmt: skip
    else:  # a night of twilight flats in several filters: one simulated sequence each
        from astropy.io import fits

        for k, filt in enumerate(NIGHT_FILTERS[: w.filters]):
            stage = d / f"stage-{k}"
            for p in simulate_night(stage, n_dome=0, n_twilight=w.frames, seed=k + 1, **common):
                if p.name.startswith("twiflat-"):
                    fits.setval(p, "FILTER", value=filt)
                    p.rename(d / p.name.replace("-V-", f"-{filt}-"))
                elif k == 0:  # one set of bias, dark and light frames for the night
                    p.rename(d / p.name)
            shutil.rmtree(stage)
    marker.write_text("")
    return d


def flat_groups(directory) -> dict[str, list[str]]:
    """The flats of a directory by filter, as gpuflat selects them (IMAGETYP contains 'flat')."""
    from astropy.io import fits

    groups: dict[str, list[str]] = {}
    for p in sorted(Path(directory).glob("*.fits")):
        h = fits.getheader(p)
        if "flat" in str(h.get("IMAGETYP", "")).lower():
            groups.setdefault(str(h.get("FILTER", "")), []).append(str(p))
    return groups


# -- in-process contenders: `bench.py --one NAME DIR OUT`, one fresh process each ----------


def one_gpuflat(directory, out, mem_limit):
    import gpuflat

    for filt, paths in flat_groups(directory).items():
        r = gpuflat.combine(paths, mem_limit=mem_limit, backend=DEVICE)
        np.save(Path(out) / f"{filt}.npy", r.image)


def one_ccdproc(directory, out, mem_limit):
    """The astropy CCD guide's "Combining flats" loop, its arguments as the guide means them
    (the guide misspells ``sigma_clip_dev_func``, which ccdproc then ignores)."""
    import ccdproc
    from astropy.stats import mad_std

    def inv_median(a):
        return 1 / np.median(a)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ifc = ccdproc.ImageFileCollection(directory)
        flat_imagetyp = "FLAT"
        flat_filters = sorted(set(h["filter"] for h in ifc.headers(imagetyp=flat_imagetyp)))
        for filt in flat_filters:
            to_combine = ifc.files_filtered(imagetyp=flat_imagetyp, filter=filt,
                                            include_path=True)  # fmt: skip
            combined_flat = ccdproc.combine(
                to_combine, method="average", scale=inv_median, sigma_clip=True,
                sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
                sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std,
                mem_limit=mem_limit, unit="adu",
            )  # fmt: skip
            combined_flat.meta["combined"] = True
            name = "combined_flat_filter_{}.fits".format(filt.replace("''", "p"))
            combined_flat.write(Path(out) / name)


def one_astropy(directory, out, mem_limit):
    from astropy.io import fits
    from astropy.stats import sigma_clip

    for filt, paths in flat_groups(directory).items():
        stack = np.stack([fits.getdata(p).astype(np.float32) for p in paths])
        stack /= np.median(stack.reshape(len(stack), -1), axis=1)[:, None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clipped = sigma_clip(
                stack, sigma=5, cenfunc="median", stdfunc="mad_std", maxiters=1, axis=0
            )
        np.save(Path(out) / f"{filt}.npy", np.ma.mean(clipped, axis=0).filled(np.nan))


def one_io_floor(directory, out, mem_limit):
    from astropy.io import fits

    for paths in flat_groups(directory).values():
        for p in paths:
            fits.getdata(p).astype(np.float32)


# -- commands ------------------------------------------------------------------------------


@dataclass
class Command:
    argv: list[str]
    stdin: str | None = None  # a file for standard input (IRAF's CL script)
    env: dict | None = None


def irafcl() -> str | None:
    return os.environ.get("GPUFLAT_BENCH_IRAFCL") or shutil.which("irafcl")


def iraf_env(cache: Path) -> dict:
    home = cache / "iraf-home"
    env = {**os.environ, "HOME": str(home), "USER": os.environ.get("USER", "bench"),
           "TERM": "dumb"}  # fmt: skip
    if not (home / ".iraf").is_dir():  # first use: irafcl sets up $HOME/.iraf (untimed)
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run([irafcl()], input="logout\n", env=env, text=True,
                       capture_output=True, check=True)  # fmt: skip
    return env


def iraf_script(name, directory: Path, out: Path) -> Path:
    """Write the CL script (and list or instrument file) a contender runs, into ``out``."""
    par = ('combine="average", scale="median", mclip=yes, lsigma=5., hsigma=5., nkeep=1, '
           "blank=0.")  # fmt: skip
    lines = ['set imtype = "fits"']
    if name == "iraf_flatcombine":
        files = sorted(str(p) for p in directory.glob("*.fits"))  # the whole night
        (out / "instrument.dat").write_text(
            "subset FILTER\nimagetyp IMAGETYP\n'FLAT' flat\n'BIAS' zero\n'DARK' dark\n"
            "'LIGHT' object\n"
        )
        lines += [
            "noao", "imred", "ccdred", "unlearn ccdred", "unlearn combine",
            'ccdred.instrument = "instrument.dat"', 'ccdred.logfile = ""',
            f'flatcombine ("@inputs.lst", output="Flat", reject="avsigclip", ccdtype="flat", '
            f"process=no, subsets=yes, {par})",
        ]  # fmt: skip
    else:
        (files,) = flat_groups(directory).values()
        reject = name.removeprefix("iraf_")
        lines += [
            "images", "immatch", "unlearn imcombine",
            f'imcombine ("@inputs.lst", "Flat.fits", reject="{reject}", outtype="real", '
            f'logfile="", {par})',
        ]  # fmt: skip
    (out / "inputs.lst").write_text("\n".join(files) + "\n")
    script = out / "run.cl"
    script.write_text("\n".join([*lines, "logout", ""]))
    return script


def command(name, workload, directory: Path, out: Path, cache: Path) -> Command:
    """How to start contender ``name``, writing into the empty folder ``out``."""
    w = WORKLOADS[workload]
    if name == "gpuflat_run" or name.startswith("workers_"):
        exe = Path(sys.executable).with_name("gpuflat")  # the console command itself
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gpuflat"]
        argv += ["run", str(directory), "-o", str(out), "-q", "--device", DEVICE,
                 "--mem-limit", str(w.mem_limit)]  # fmt: skip
        if name.startswith("workers_"):
            argv += ["--workers", name.removeprefix("workers_")]
        return Command(argv)
    if name.startswith("iraf_"):
        return Command([irafcl()], str(iraf_script(name, directory, out)), iraf_env(cache))
    return Command([sys.executable, __file__, "--one", name, str(directory), str(out),
                    str(w.mem_limit)])  # fmt: skip


def timed(cmd: Command, out: Path) -> tuple[float, int | None]:
    """Run ``cmd`` in ``out`` as a fresh process: (wall seconds, peak RSS bytes or None)."""
    rss_file = out.parent / f"{out.name}.rss"
    argv = cmd.argv
    if os.access(TIME, os.X_OK):
        argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as fh, open(cmd.stdin or os.devnull) as stdin:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=out, stdin=stdin, stdout=fh, stderr=subprocess.STDOUT,
                              env=cmd.env)  # fmt: skip
        seconds = time.perf_counter() - t0
    text = log.read_text()
    # IRAF's CL exits 0 after a failed task: an ERROR in its log or no product is a failure
    if proc.returncode or (cmd.stdin and ("ERROR" in text or not any(out.glob("*.fits")))):
        raise RuntimeError(f"{' '.join(cmd.argv)} failed ({proc.returncode}):\n{text[-3000:]}")
    rss = int(rss_file.read_text().split()[-1]) * 1024 if rss_file.exists() else None
    return seconds, rss


def fresh(out: Path) -> Path:
    """Empty ``out`` and flush dirty pages, so the next contender starts clean."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    return out


def warm_cache(directory: Path) -> None:
    for p in sorted(directory.glob("*.fits")):
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def byte_compile() -> None:
    """gpuflat's modules compiled to bytecode once, as installing a wheel does (and as
    pip did for every other contender's packages): an editable install where
    PYTHONDONTWRITEBYTECODE is set would compile them again in every process (0.05 s)."""
    import compileall

    import gpuflat

    compileall.compile_dir(Path(gpuflat.__file__).parent, quiet=1)


# -- agreement -----------------------------------------------------------------------------


def products(out: Path) -> dict[str, np.ndarray]:
    """The combined images a contender left in ``out``, by filter: ``FILTER.npy`` files or
    FITS products (the first image HDU; the filter from its header)."""
    from astropy.io import fits

    images = {p.stem: np.load(p) for p in out.glob("*.npy")}
    for p in sorted(out.glob("*.fits")):
        with fits.open(p) as hdul:
            hdu = next(h for h in hdul if h.data is not None)
            images[str(hdul[0].header.get("FILTER", hdu.header.get("FILTER", "")))] = hdu.data
    return {k: np.asarray(v, np.float64) for k, v in images.items()}


def agreement(images, reference, rescale=False) -> dict:
    """Relative difference to the reference over pixels finite in both, worst filter."""
    worst = {"max_rel_diff": 0.0, "p999_rel_diff": 0.0}
    if set(images) != set(reference):
        return {"error": f"filters {sorted(images)} against {sorted(reference)}"}
    for filt, ref in reference.items():
        image = images[filt]
        both = np.isfinite(image) & np.isfinite(ref) & (ref != 0)
        if rescale:  # IRAF's level is its first frame's or the mean one, not 1
            image = image * (np.median(ref[both]) / np.median(image[both]))
        rel = np.abs(image[both] - ref[both]) / np.abs(ref[both])
        if rel.size:
            worst["max_rel_diff"] = max(worst["max_rel_diff"], float(rel.max()))
            worst["p999_rel_diff"] = max(worst["p999_rel_diff"], float(np.quantile(rel, 0.999)))
    return worst


# -- driver --------------------------------------------------------------------------------


def bench_workload(name, contenders, repeats, cache: Path, warm_up=True) -> dict:
    w = WORKLOADS[name]
    directory = make_workload(name, cache)
    groups = flat_groups(directory)
    outputs = cache / "outputs" / name
    warm_cache(directory)
    byte_compile()
    if warm_up:  # numba compiles its on-disk cache on first use in a fresh checkout
        out = fresh(outputs / BASELINE)
        timed(command(BASELINE, name, directory, out, cache), out)
    times = {c: [] for c in contenders}
    rss = {c: [] for c in contenders}
    for r in range(repeats):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:  # alternate, rotating the order between repeats
            out = fresh(outputs / c)
            seconds, peak = timed(command(c, name, directory, out, cache), out)
            times[c].append(seconds)
            rss[c].append(peak)
    reference = None
    if not w.detectors:
        if "astropy" not in contenders:  # the reference, once, untimed
            out = fresh(outputs / "astropy")
            timed(command("astropy", name, directory, out, cache), out)
        reference = products(outputs / "astropy")
    pixels = sum(map(len, groups.values())) * max(w.detectors, 1) * w.rows * w.cols
    base = statistics.median(times[BASELINE])
    results = {}
    for c in contenders:
        t = statistics.median(times[c])
        peaks = [p for p in rss[c] if p is not None]
        results[c] = {
            "median_s": round(t, 4),
            "times_s": [round(x, 4) for x in times[c]],
            # contender time / gpuflat run's, 3 significant digits (never rounded to 0:
            # with --quick the baseline's first run may include numba's cold compile)
            "ratio": float(f"{t / base:.3g}"),
            "mpix_per_s": round(pixels / t / 1e6, 1),
            "peak_rss_mb": round(max(peaks) / 1e6, 1) if peaks else None,
        }
        if reference is not None and c != "io_floor":
            results[c]["agreement"] = agreement(
                products(outputs / c), reference, rescale=c.startswith("iraf_")
            )
    return {
        **asdict(w),
        "files": len(list(directory.glob("*.fits"))),
        "flats": sum(map(len, groups.values())),
        "groups": sorted(groups),
        "baseline": BASELINE,
        "repeats": repeats,
        "results": results,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workloads", default="W1,W2,N1", help="comma list of " + ",".join(WORKLOADS)
    )
    parser.add_argument(
        "--contenders",
        help="comma list (default: per workload; IRAF ones only when irafcl is present)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="tiny workloads, one repeat (for tests)"
    )
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, directory, out, mem_limit = args.one
        return globals()[f"one_{name}"](directory, out, float(mem_limit))
    cache = Path(args.cache).resolve()
    workloads = ["tiny", "tiny_night"] if args.quick else args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(
            f"--workloads: no workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})"
        )
    asked = args.contenders.split(",") if args.contenders else None
    known = dict.fromkeys(SINGLE + NIGHT + MOSAIC)
    if asked and any(c not in known for c in asked):
        bad = ", ".join(c for c in asked if c not in known)
        parser.error(f"--contenders: no contender {bad} (known: {', '.join(known)})")
    repeats = 1 if args.quick else args.repeats
    results = {"machine": machine_facts(), "workloads": {}}
    for name in workloads:
        suited = default_contenders(WORKLOADS[name])
        contenders = [c for c in asked if c in suited] if asked else list(suited)
        unsuited = [c for c in asked or () if c not in suited]
        if unsuited:  # e.g. flatcombine on a single group, the worker counts on one file
            print(f"{name}: not a contender for this workload, left out: {', '.join(unsuited)}")
        contenders = [c for c in contenders if irafcl() or not c.startswith("iraf_")]
        if BASELINE not in contenders:
            contenders.insert(0, BASELINE)
        results["workloads"][name] = bench_workload(
            name, contenders, repeats, cache, warm_up=not args.quick
        )
        print_table(name, results["workloads"][name])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nresults: {args.json}")
    return 0


def print_table(name, data):
    what = f"{len(data['groups'])} filters x {data['frames']}" if data["filters"] > 1 else (
        f"{data['flats']} files x {data['detectors']} detectors" if data["detectors"]
        else f"{data['flats']}"
    )  # fmt: skip
    print(
        f"\n{name}: {what} x {data['rows']}x{data['cols']} {data['dtype']} "
        f"(mem_limit {data['mem_limit'] / 1e6:.0f} MB, median of {data['repeats']}, "
        "fresh processes, wall time)"
    )
    head = ("contender", "median s", "x gpuflat run", "Mpix/s", "peak MB", "max rel", "p99.9 rel")
    print("{:<17} {:>9} {:>13} {:>8} {:>8} {:>9} {:>9}".format(*head))
    for c, e in data["results"].items():
        a = e.get("agreement", {})
        diff = [f"{a[k]:.1e}" if k in a else "" for k in ("max_rel_diff", "p999_rel_diff")]
        peak = "" if e["peak_rss_mb"] is None else f"{e['peak_rss_mb']:.0f}"
        print(
            f"{c:<17} {e['median_s']:>9.3f} {e['ratio']:>13.2f} {e['mpix_per_s']:>8.1f} "
            f"{peak:>8} {diff[0]:>9} {diff[1]:>9}"
        )


def machine_facts():
    import astropy
    import numba

    import gpuflat

    facts = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cpus": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "astropy": astropy.__version__,
        "gpuflat": gpuflat.__version__,
        "device": DEVICE,
    }
    try:
        import ccdproc

        facts["ccdproc"] = ccdproc.__version__
    except ImportError:
        pass
    if irafcl():
        run = subprocess.run([irafcl(), "-v"], capture_output=True, text=True)
        facts["iraf"] = run.stdout.strip() or "present"
    return facts


if __name__ == "__main__":
    sys.exit(main())
