"""`gpuflat` end to end through main(argv)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from conftest import flat_stack, write_fits

import gpuflat
from gpuflat.cli import main


@pytest.fixture
def night(tmp_path, rng):
    """Two filters (one named with primes), a twilight set, and frames that are not flats."""
    d = tmp_path / "night"
    d.mkdir()
    for filt, imagetyp, n in (
        ("g''", "flatfield", 5),
        ("r''", "Flat Field", 4),
        ("V", "SKYFLAT", 6),
    ):
        for i, a in enumerate(flat_stack(rng, n=n, shape=(40, 30))):
            write_fits(
                d / f"flat-{filt.strip(chr(39))}-{i}.fits",
                a,
                IMAGETYP=imagetyp,
                FILTER=filt,
                EXPTIME=1.0 + i,
            )
    write_fits(d / "bias.fits", np.zeros((40, 30), np.float32), IMAGETYP="BIAS")
    write_fits(d / "light.fits", np.ones((40, 30), np.float32), IMAGETYP="LIGHT", FILTER="V")
    (d / "notes.txt").write_text("not fits")
    return d


def test_run_writes_one_product_per_filter(night, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out), "-q"]) == 0
    names = sorted(p.name for p in out.glob("*.fits"))
    assert names == [
        "combined_flat_filter_V.fits",
        "combined_flat_filter_gp.fits",
        "combined_flat_filter_rp.fits",
    ]
    ccd = CCDData.read(out / "combined_flat_filter_gp.fits")
    files = sorted(str(p) for p in night.glob("flat-g-*.fits"))
    expected = gpuflat.combine(files)
    np.testing.assert_array_equal(ccd.data, expected.image)
    np.testing.assert_array_equal(ccd.uncertainty.array, expected.uncertainty)
    with fits.open(out / "combined_flat_filter_gp.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT", "NCOMBINE"] or {
            h.name for h in hdul
        } == {"PRIMARY", "MASK", "UNCERT", "NCOMBINE"}
        h = hdul[0].header
        np.testing.assert_array_equal(hdul["NCOMBINE"].data, expected.count)
        assert h["NCOMBINE"] == 5 and h["FILTER"] == "g''" and h["IMAGETYP"] == "flatfield"
        assert h["IMCMB001"] == "flat-g-0.fits" and h["SCALE001"] == pytest.approx(
            expected.scales[0]
        )
        assert h["GPF_BACK"] == "cpu" and h["GPF_VERS"] == gpuflat.__version__
        assert h["HIERARCH GPUFLAT SIGMA_LOW"] == 5.0 and h["HIERARCH GPUFLAT CENTER"] == "median"
        assert "BZERO" not in h


def test_skip_existing_and_overwrite(night, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "combined_flat_filter_V.fits"
    target.write_text("keep me")
    assert main(["run", str(night), "-o", str(out)]) == 0
    assert target.read_text() == "keep me"
    assert "exists, skipped" in capsys.readouterr().err
    assert main(["run", str(night), "-o", str(out), "--overwrite", "-q"]) == 0
    assert CCDData.read(target).shape == (40, 30)
    assert not list(out.glob(".*tmp*"))


def test_selection_grouping_and_inspect(night, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out), "--imagetyp", "flat field", "-q"]) == 0
    assert [p.name for p in out.glob("*.fits")] == ["combined_flat_filter_rp.fits"]
    assert (
        main(
            [
                "run",
                str(night / "*.fits"),
                "-o",
                str(out),
                "--where",
                "FILTER=V",
                "-q",
                "--group-by",
                "FILTER,EXPTIME",
                "--min-frames",  # one frame per exposure time
                "1",
            ]
        )
        == 0
    )
    assert len(list(out.glob("combined_flat_filter_V_*.fits"))) == 6
    listfile = tmp_path / "list.txt"
    listfile.write_text("\n".join(str(p) for p in sorted(night.glob("flat-r-*.fits"))))
    assert main(["inspect", f"@{listfile}"]) == 0
    text = capsys.readouterr().out
    assert "4 flat(s) selected, 1 group(s)" in text and "combined_flat_filter_rp.fits" in text


def test_shapes_are_never_mixed(night, tmp_path, capsys):
    write_fits(
        night / "flat-V-big.fits", np.ones((50, 30), np.float32), IMAGETYP="FLAT", FILTER="V"
    )
    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out), "-q", "--min-frames", "1"]) == 0
    # the six 40x30 frames keep the plain name, the stray frame's says its shape
    assert sorted(p.name for p in out.glob("combined_flat_filter_V*")) == [
        "combined_flat_filter_V.fits",
        "combined_flat_filter_V_50x30_bin1x1.fits",
    ]


def test_plots_and_report(night, tmp_path):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    assert main(["run", str(night), "-o", str(out), "--plots", "--report", str(report), "-q"]) == 0
    data = json.loads(report.read_text())
    assert data["backend"] == "cpu" and len(data["groups"]) == 3
    group = data["groups"][0]
    assert group["status"] == "written" and len(group["frames"]) == len(group["files"])
    assert 0 <= group["rejected_fraction"] < 0.1
    assert set(group["plots"]) == {"levels", "flat", "scaling"}
    for path in group["plots"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(g["timings"]["plots"] > 0 for g in data["groups"])


def test_truncated_file_fails_its_group_only(night, tmp_path, capsys):
    bad = night / "flat-g-0.fits"
    bad.write_bytes(bad.read_bytes()[:-3000])
    out = tmp_path / "out"
    assert main(["run", str(night), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "flat-g-0.fits" in err and "truncated" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.fits")) == [
        "combined_flat_filter_V.fits",
        "combined_flat_filter_rp.fits",
    ]
    assert main(["run", str(night), "-o", str(out), "--skip-bad"]) == 0
    assert "skipped" in capsys.readouterr().err
    assert fits.getheader(out / "combined_flat_filter_gp.fits")["NCOMBINE"] == 4


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["run", "does-not-exist"], 2, "does-not-exist: no such file"),
        (["run", "{night}", "--sigma-low", "-1"], 2, "sigma_low"),
        (["run", "{night}", "--scale", "bogus"], 2, "scale"),
        (["run", "{night}", "--where", "FILTER"], 2, "KEY=VALUE"),
        (["run", "{night}", "--imagetyp", "nothing"], 1, "no flat frames"),
        (["run", "{night}", "--device", "cuda"], 1, "cuda"),
        (["run", "{night}", "--mem-limit", "1000"], 1, "mem_limit"),
        (["run", "{night}", "--device-mem-limit", "0"], 2, "device_mem_limit"),
        (["simulate", "{tmp}/sim", "--size", "big"], 2, "--size"),
    ],
)
def test_errors_are_one_line_with_exit_codes(night, tmp_path, capsys, argv, code, words):
    if "--device" in argv and gpuflat.backends.cuda_status()[0]:
        pytest.skip("a GPU is present")
    argv = [a.format(night=night, tmp=tmp_path) for a in argv]
    assert main([*argv, "-o", str(tmp_path / "o")] if argv[0] == "run" else argv) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_the_process_entry_point(night, tmp_path):
    """``python -m gpuflat`` (the console script's ``console()``): main's exit codes become
    the process's, its products equal the library's, expected errors are one line."""
    import subprocess
    import sys

    def gpuflat_cmd(*argv):
        return subprocess.run(
            [sys.executable, "-m", "gpuflat", *argv], capture_output=True, text=True, timeout=300
        )

    out = tmp_path / "out"
    done = gpuflat_cmd("run", str(night), "-o", str(out), "-q")
    assert done.returncode == 0, done.stderr
    files = sorted(str(p) for p in night.glob("flat-V-*.fits"))
    with fits.open(out / "combined_flat_filter_V.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, gpuflat.combine(files).image)
    failed = gpuflat_cmd("run", str(tmp_path / "nothing-here"), "-o", str(out))
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "nothing-here: no such file" in failed.stderr


SKIP_PROBE = """
import sys
from gpuflat import cli
cli._skip_blas_probe()
import numba.np.arraymath as arraymath
print(arraymath._HAVE_BLAS, "scipy.linalg" in sys.modules)
import scipy.linalg  # imports as usual afterwards
print(scipy.linalg.cython_blas.__name__)
"""


def test_the_command_spares_numba_its_blas_probe():
    """In a fresh process (as the command's), numba's BLAS probe finds nothing and
    scipy.linalg is not imported for it, yet imports as usual afterwards."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SKIP_PROBE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "scipy.linalg.cython_blas"]


def test_output_to_a_closed_pipe_stops_quietly():
    """``gpuflat info | head -0``: the reader is gone before the first line; the command
    stops with the status a shell reports for SIGPIPE, and says nothing."""
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-m", "gpuflat", "info"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 141 and err == ""


def test_help_version_and_info(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and gpuflat.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--sigma-low" in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu backend: available" in out and "cuda backend" in out


def test_stale_temporaries_of_killed_runs_are_removed(night, tmp_path):
    """A run killed while writing leaves a hidden temporary file; the next write of that
    product removes it when its process is gone (this host's only)."""
    from gpuflat import _atomic

    out = tmp_path / "out"
    out.mkdir()
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has it
    name = "combined_flat_filter_V.fits"
    stale = out / f".{name}.tmp-{_atomic._HOST}-{dead}"
    alive = out / f".{name}.tmp-{_atomic._HOST}-{os.getppid()}"
    other_host = out / f".{name}.tmp-elsewhere-{dead}"
    for p in (stale, alive, other_host):
        p.write_bytes(b"half a product")
    assert main(["run", str(night), "-o", str(out), "-q"]) == 0
    assert not stale.exists() and alive.exists() and other_host.exists()
    assert (out / name).exists()


def test_flats_written_by_ccddata_are_single_images(tmp_path, rng):
    """CCDData.write adds UNCERT and MASK image HDUs: still one image, not a mosaic; and a
    gpuflat product (with its NCOMBINE plane) reads back as one image too."""
    from astropy.nddata import StdDevUncertainty

    d = tmp_path / "ccd"
    d.mkdir()
    stack = flat_stack(rng, n=4, shape=(30, 20))
    for i, a in enumerate(stack):
        meta = {"IMAGETYP": "FLAT", "FILTER": "R"}
        uncertainty = StdDevUncertainty(np.ones_like(a))
        ccd = CCDData(a, unit="adu", uncertainty=uncertainty, mask=a < 0, meta=meta)
        ccd.write(d / f"flat{i}.fits")
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "-q"]) == 0
    product = out / "combined_flat_filter_R.fits"
    np.testing.assert_array_equal(CCDData.read(product).data, gpuflat.combine(stack).image)
    assert gpuflat.combine([product, product]).image.shape == (30, 20)
