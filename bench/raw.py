"""Raw flats: gpuflat's fused calibration against the guide's calibrate-write-read-combine.

``python bench/raw.py [--frames N] [--size ROWSxCOLS] [--repeats R]`` simulates a raw night
(``gpuflat simulate --raw``: overscan strip, BIASSEC/TRIMSEC, master bias and dark) once,
then times, each in a fresh process, alternating:

- ``guide``: the astropy CCD guide's two notebooks: ``ccd_process`` (overscan, trim, master
  bias, dark scaled by exposure) on every flat, each written to disk, then read back by the
  guide's ``ccdproc.combine`` call;
- ``guide+gpuflat``: the same calibration and writes, then ``gpuflat.combine`` on the files;
- ``fused``: ``gpuflat run`` in-process with ``--overscan --trim --bias --dark``, nothing
  written but the product (checksummed and verified).

Times include the imports after numpy and astropy.io.fits. It prints one line per contender
(median of the repeats) and the agreement of the fused product with ``guide+gpuflat``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

CODE = {
    "guide": """
import glob, sys, warnings
import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
from astropy.stats import mad_std
import ccdproc
raw, work = sys.argv[1], sys.argv[2]
warnings.simplefilter("ignore")
bias = CCDData.read(raw + "/master-bias.fits", unit="adu")
dark = CCDData.read(raw + "/master-dark.fits", unit="adu")
out = []
for p in sorted(glob.glob(raw + "/twiflat-*.fits")):
    ccd = CCDData.read(p, unit="adu")
    ccd = ccdproc.ccd_process(ccd, oscan=ccd.header["BIASSEC"], trim=ccd.header["TRIMSEC"],
        master_bias=bias, dark_frame=dark, exposure_key="EXPTIME", exposure_unit=u.s,
        dark_scale=True)
    name = work + "/cal-" + p.rsplit("/", 1)[1]
    ccd.write(name, overwrite=True)
    out.append(name)
COMBINE
""",
    "fused": """
import sys
from gpuflat.farm import RunOptions, run
raw, work = sys.argv[1], sys.argv[2]
opts = RunOptions(inputs=(raw,), outdir=work, imagetyp=("FLAT",), overwrite=True,
    overscan="BIASSEC", trim="TRIMSEC", bias=raw + "/master-bias.fits",
    dark=raw + "/master-dark.fits", quiet=True)
assert not run(opts).failed
""",
}
GUIDE_COMBINE = """
def inv_median(a):
    return 1 / np.median(a)
c = ccdproc.combine(out, method="average", scale=inv_median, sigma_clip=True,
    sigma_clip_low_thresh=5, sigma_clip_high_thresh=5, sigma_clip_func=np.ma.median,
    sigma_clip_dev_func=mad_std, mem_limit=350e6, unit="adu")
c.write(work + "/guide.fits", overwrite=True)
"""
GPUFLAT_COMBINE = """
import gpuflat
r = gpuflat.combine(out)
from astropy.io import fits
fits.writeto(work + "/guide-gpuflat.fits", r.image, overwrite=True)
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows, cols = (int(v) for v in args.size.split("x"))
    from gpuflat._simulate import simulate_night

    base = Path(tempfile.mkdtemp(prefix="gpuflat-raw-bench-"))
    raw = base / "raw"
    simulate_night(raw, shape=(rows, cols), n_dome=0, n_twilight=args.frames, raw=True)
    code = {
        "guide": CODE["guide"].replace("COMBINE", GUIDE_COMBINE),
        "guide+gpuflat": CODE["guide"].replace("COMBINE", GPUFLAT_COMBINE),
        "fused": CODE["fused"],
    }
    times = {k: [] for k in code}
    for _ in range(args.repeats):
        for name, text in code.items():
            work = base / name
            work.mkdir(exist_ok=True)
            prelude = "import numpy, astropy.io.fits, time; t0 = time.perf_counter()\n"
            tail = "\nprint(time.perf_counter() - t0)\n"
            res = subprocess.run(
                [sys.executable, "-c", prelude + text + tail, str(raw), str(work)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            times[name].append(float(res.stdout.split()[-1]))
    print(f"{args.frames} raw flats of {rows}x{cols} (+ overscan), median of {args.repeats}:")
    for name, values in times.items():
        print(f"  {name:14s} {statistics.median(values):7.2f} s")
    fused = fits.getdata(base / "fused" / "combined_flat_filter_V.fits")
    ref = fits.getdata(base / "guide+gpuflat" / "guide-gpuflat.fits")
    diff = np.nanmax(abs(fused / ref - 1))
    print(f"  fused vs guide+gpuflat: max relative difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
