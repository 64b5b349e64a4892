"""`gpuflat run --config farm.toml`: loading, precedence, errors, provenance."""

import json
import os
import sys

import numpy as np
import pytest
from astropy.io import fits
from conftest import flat_stack, write_fits

from gpuflat.cli import main


@pytest.fixture
def night(tmp_path, rng):
    """Two filters of three tiny frames."""
    d = tmp_path / "night"
    d.mkdir()
    for filt in ("B", "V"):
        for i, a in enumerate(flat_stack(rng, n=3, shape=(40, 30))):
            write_fits(d / f"flat-{filt}-{i}.fits", a, IMAGETYP="FLAT", FILTER=filt)
    return d


def _toml(path, text):
    path.write_text(text)
    return str(path)


def _run(capsys, *argv):
    code = main(["run", *map(str, argv)])
    return code, capsys.readouterr().err


def test_config_file_options_and_flag_precedence(night, tmp_path, capsys):
    cfg = _toml(
        tmp_path / "farm.toml",
        """
inputs = ["night"]               # relative to this file
outdir = "masters"
report = "report.json"
group-by = ["FILTER"]            # hyphens ...
sigma_low = 3                    # ... or underscores; an integer for a float option
sigma-high = 4.5
method = "median"
maxiters = "none"
where = "FILTER=V"
quiet = true
""",
    )
    code, err = _run(capsys, "--config", cfg, "--method", "average", "--sigma-high", "5")
    assert code == 0, err
    out = tmp_path / "masters"
    assert [p.name for p in out.glob("*.fits")] == ["combined_flat_filter_V.fits"]
    h = fits.getheader(out / "combined_flat_filter_V.fits")
    assert h["HIERARCH GPUFLAT SIGMA_LOW"] == 3.0  # from the file
    assert h["HIERARCH GPUFLAT SIGMA_HIGH"] == 5.0  # the flag overrides the file
    assert h["HIERARCH GPUFLAT METHOD"] == "average"  # the flag, although it is the default
    assert h["HIERARCH GPUFLAT MAXITERS"] is None  # no value, not the text "None"
    assert "None" not in repr(h)
    assert h["HIERARCH GPUFLAT CONFIG"] == cfg
    report = json.loads((tmp_path / "report.json").read_text())  # relative to the file
    assert report["config_file"] == cfg
    conf = report["configuration"]
    assert conf["sigma_low"] == 3.0 and conf["sigma_high"] == 5.0 and conf["method"] == "average"
    assert conf["inputs"] == [str(tmp_path / "night")] and conf["where"] == ["FILTER=V"]
    assert conf["group_by"] == "FILTER" and conf["quiet"] is True and conf["workers"] is None
    # inputs and a list option given on the command line replace the file's
    code, err = _run(
        capsys, night / "flat-B-0.fits", night / "flat-B-1.fits", night / "flat-B-2.fits",
        "--config", cfg, "--where", "FILTER=B", "-o", tmp_path / "b",
    )  # fmt: skip
    assert code == 0, err
    assert [p.name for p in (tmp_path / "b").glob("*.fits")] == ["combined_flat_filter_B.fits"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sigma_lo = 3", "unknown key 'sigma_lo' (did you mean 'sigma_low'?)"),
        ("sigma-hihg = 3", "unknown key 'sigma-hihg' (did you mean 'sigma-high'?)"),
        ("frobnicate = 1", "unknown key 'frobnicate' (see 'gpuflat run --help'"),
        ('sigma_low = "three"', "sigma_low: expected a number, got string 'three'"),
        ("nlow = 1.5", "nlow: expected an integer, got float 1.5"),
        ('overwrite = "yes"', "overwrite: expected true or false, got string 'yes'"),
        ("imagetyp = [1, 2]", "imagetyp: expected a string or an array of strings"),
        ("outdir = 3", "outdir: expected a string, got integer 3"),
        ('method = "avg"', "method: must be one of 'average', 'median', 'sum'; got 'avg'"),
        ("workers = 0", "workers: expected an integer >= 1, got integer 0"),
        ("[run]\nmethod = 'median'", "unknown key 'run'"),
        ('config = "other.toml"', "'config' cannot be set in the file"),
        ("sigma_low = 3\nsigma-low = 4", "'sigma-low' and 'sigma_low' are the same option"),
        ("method = ", "not valid TOML"),
        ('device-mem-limit = "lots"', "device-mem-limit: expected a size in bytes"),
        ('mem-limit = "10 parsecs"', "mem-limit: expected a size in bytes"),
    ],
)
def test_config_errors_are_one_line(night, tmp_path, capsys, text, words):
    cfg = _toml(tmp_path / "farm.toml", f'inputs = ["{night}"]\n{text}\n')
    code, err = _run(capsys, "--config", cfg, "-o", tmp_path / "out")
    assert code == 2
    assert words in err and cfg in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_config_and_missing_inputs(tmp_path, capsys):
    code, err = _run(capsys, "--config", tmp_path / "nope.toml")
    assert code == 2 and "nope.toml: no such file" in err and err.count("\n") == 1
    code, err = _run(capsys, "--config", tmp_path)
    assert code == 2 and "is a directory" in err
    code, err = _run(capsys, "--config", _toml(tmp_path / "farm.toml", "quiet = true\n"))
    assert code == 2 and "no INPUT given" in err


def test_farm_flags_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--config" in text and "--workers" in text and "--scheduler" in text


def test_workers_without_dask_is_a_clear_error(night, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code, err = _run(capsys, night, "-o", tmp_path / "out", "--workers", "2")
    assert code == 2 and err.count("\n") == 1
    assert "--workers needs dask.distributed" in err and "gpuflat[distributed]" in err
    assert not (tmp_path / "out").exists()
    code, err = _run(capsys, night, "--workers", "2", "--scheduler", "tcp://x:1")
    assert code == 2 and "exclude each other" in err


def test_in_process_run_imports_no_dask(night, tmp_path, capsys):
    import subprocess

    code = (
        "import sys; from gpuflat.cli import main; "
        f"rc = main(['run', {str(night)!r}, '-o', {str(tmp_path / 'out')!r}, '-q']); "
        "assert rc == 0, rc; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_device_mem_limit_option(tmp_path):
    """--device-mem-limit: a flag, a TOML key (a number or 'none'), into CombineConfig."""
    from gpuflat.farm.options import build_options

    cfg = _toml(tmp_path / "farm.toml", "device_mem_limit = 2e9\n")
    assert build_options({}, cfg).combine.device_mem_limit == 2e9
    assert build_options({"device_mem_limit": 5e9}, cfg).combine.device_mem_limit == 5e9
    assert build_options({}).combine.device_mem_limit is None
    none = _toml(tmp_path / "none.toml", 'device-mem-limit = "none"\n')
    assert build_options({}, none).combine.device_mem_limit is None


@pytest.mark.parametrize(
    "text, expected",
    [("350e6", 350e6), ("350MB", 350e6), ("2GiB", 2 * 2**30), ("1.5 gb", 1.5e9),
     ("512M", 512e6), ("64kib", 65536.0), ("1000", 1000.0)],
)  # fmt: skip
def test_memory_limits_take_units(tmp_path, text, expected):
    """--mem-limit and --device-mem-limit: bytes as a number or with a unit, from the
    command line and from a TOML file alike."""
    from gpuflat._cli_parser import build_parser
    from gpuflat.farm.options import build_options

    args = build_parser().parse_args(["run", "x", "--mem-limit", text, "--device-mem-limit", text])
    assert (args.mem_limit, args.device_mem_limit) == (expected, expected)
    cfg = _toml(tmp_path / "farm.toml", f'mem-limit = "{text}"\n')
    assert build_options({}, cfg).mem_limit == expected


def test_a_relative_mask_in_the_config_file_is_relative_to_the_file(tmp_path, monkeypatch):
    """``mask = "bpm.fits"`` in conf/farm.toml is conf/bpm.fits, whatever the working
    folder (which holds a decoy of the same name); a --mask flag stays as given."""
    from gpuflat.farm.options import build_options

    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    for d in (conf, elsewhere):
        write_fits(d / "bpm.fits", np.zeros((4, 4), np.uint8))
    monkeypatch.chdir(elsewhere)
    cfg = _toml(conf / "farm.toml", 'mask = "bpm.fits"\n')
    assert os.path.abspath(build_options({}, cfg).mask) == str(conf / "bpm.fits")
    assert build_options({"mask": "bpm.fits"}, cfg).mask == "bpm.fits"


def test_workers_in_the_file_give_way_to_a_scheduler_flag(tmp_path, monkeypatch):
    """``workers = 8`` in the file and ``--scheduler`` on the command line: the flag's choice
    (and the other way round); both on the command line stay an error."""
    from gpuflat import cli
    from gpuflat.farm.options import OptionError, build_options

    address = "tcp://127.0.0.1:8786"
    cfg = _toml(tmp_path / "farm.toml", 'inputs = ["night"]\nworkers = 8\n')
    opts = build_options({"scheduler": address}, cfg)
    assert opts.scheduler == address and opts.workers is None and opts.distributed
    assert build_options({}, cfg).workers == 8
    other = _toml(tmp_path / "other.toml", f'inputs = ["night"]\nscheduler = "{address}"\n')
    opts = build_options({"workers": 2}, other)
    assert opts.workers == 2 and not opts.scheduler
    with pytest.raises(OptionError, match="exclude each other"):
        build_options({"workers": 2, "scheduler": address}, cfg)
    seen = []
    monkeypatch.setattr(cli, "_run", lambda opts, *command: seen.append(opts) or 0)
    assert main(["run", "--config", cfg, "--scheduler", address]) == 0
    assert seen[0].scheduler == address and seen[0].workers is None
