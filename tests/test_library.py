"""The library's inputs (globs, iterables, ImageFileCollection), its refusal of mixed units
and its results' products (``write``, ``to_ccddata``) with the command's provenance."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from conftest import flat_stack, write_fits

import gpuflat
from gpuflat.cli import main
from gpuflat.errors import NoFramesError

SHAPE = (16, 16)


@pytest.fixture
def frames(rng):
    return flat_stack(rng, n=5, shape=SHAPE)


@pytest.fixture
def files(tmp_path, frames):
    d = tmp_path / "night"
    d.mkdir()
    paths = [
        write_fits(d / f"flat-{i}.fits", a, IMAGETYP="FLAT", FILTER="V", BUNIT="adu")
        for i, a in enumerate(frames)
    ]
    write_fits(d / "bias.fits", np.zeros(SHAPE, np.float32), IMAGETYP="BIAS")
    return paths


def reference(frames):
    """The guide's combination with NumPy: 1/median scaling, 5-sigma clipping about the
    median with the MAD-based width, the mean of the survivors (float64)."""
    stack = np.asarray(frames, np.float64)
    scaled = stack / np.median(stack, axis=(1, 2))[:, None, None]
    centre = np.median(scaled, axis=0)
    width = 1.482602218505602 * np.median(np.abs(scaled - centre), axis=0)
    keep = (scaled >= centre - 5 * width) & (scaled <= centre + 5 * width)
    return np.where(keep, scaled, 0).sum(0) / keep.sum(0)


def test_a_glob_a_generator_and_a_collection_are_the_files(files, frames):
    expected = gpuflat.combine(files)
    np.testing.assert_allclose(expected.image, reference(frames), rtol=1e-6)
    night = str(files[0]).rsplit("/", 1)[0]
    got = gpuflat.combine(f"{night}/flat-*.fits")
    assert got.names == sorted(files)
    np.testing.assert_array_equal(got.image, expected.image)
    got = gpuflat.combine(p for p in files)  # a generator
    np.testing.assert_array_equal(got.image, expected.image)
    got = gpuflat.combine([f"{night}/flat-[0-2].fits", files[3], f"{night}/flat-4*"])
    assert got.names == files
    got = gpuflat.combine(CCDData(a, unit="adu") for a in frames)  # CCDData, lazily
    np.testing.assert_array_equal(got.image, expected.image)
    with pytest.raises(NoFramesError, match="no file matches"):
        gpuflat.combine(f"{night}/nothing-*.fits")


def test_an_image_file_collection_is_its_files(files, frames):
    from ccdproc import ImageFileCollection

    night = str(files[0]).rsplit("/", 1)[0]
    expected = gpuflat.combine(files)
    flats = ImageFileCollection(night, glob_include="flat-*")
    got = gpuflat.combine(flats)
    assert sorted(got.names) == sorted(files)  # paths: streamed from the files
    np.testing.assert_array_equal(got.image, gpuflat.combine(sorted(got.names)).image)
    np.testing.assert_allclose(got.image, expected.image, rtol=1e-6)
    # as the guide filters a collection, and the collection filtered in place
    chosen = ImageFileCollection(night).files_filtered(imagetyp="flat", include_path=True)
    np.testing.assert_array_equal(gpuflat.combine(chosen).image, got.image)
    assert len(gpuflat.combine_mosaic(flats, backend="cpu").names) == 5
    with pytest.warns(UserWarning, match="no FITS files"):
        empty = ImageFileCollection(night, glob_include="nothing*")
    with pytest.raises(NoFramesError, match="empty"):
        gpuflat.combine(empty)


def test_frames_in_different_units_are_refused(frames, files):
    """As ccdproc (and gpuflat's ccdproc_compat) refuse them: a ValueError naming both."""
    from ccdproc import combine as ccdproc_combine

    ccds = [CCDData(a, unit="adu") for a in frames]
    ccds[2] = CCDData(frames[2] * 1.5, unit="electron")
    with pytest.raises(TypeError, match="same unit"):
        ccdproc_combine(ccds)
    with pytest.raises(ValueError, match=r"ccddata\[2\]: unit 'electron' differs from .*'adu'"):
        gpuflat.combine(ccds)
    # files: BUNIT, with ADU as CCDData.read takes it
    other = str(files[0]).replace("flat-0", "electrons")
    write_fits(other, frames[0], IMAGETYP="FLAT", FILTER="V", BUNIT="electron")
    with pytest.raises(ValueError, match="electron"):
        gpuflat.combine([*files, other])
    upper = str(files[0]).replace("flat-0", "upper")
    write_fits(upper, frames[0], IMAGETYP="FLAT", FILTER="V", BUNIT="ADU")
    assert gpuflat.combine([*files, upper], scale="none").unit == "adu"
    # arrays have no unit: they take the others'
    mixed = gpuflat.combine([frames[0], ccds[1]], scale="none")
    assert mixed.unit == "adu" and mixed.to_ccddata().unit == "adu"
    electrons = [frames[0], CCDData(frames[1], unit="electron")]
    assert gpuflat.combine(electrons, scale="none").unit == "electron"


@pytest.mark.parametrize(
    ("scale", "unit"),
    [("median", u.dimensionless_unscaled), ("mean", u.dimensionless_unscaled),
     ("none", u.adu), ("exptime:EXPTIME", u.adu), ((1.0, 2.0, 1.0, 0.5, 1.0), u.adu)],
)  # fmt: skip
def test_a_normalised_flat_is_dimensionless(frames, tmp_path, scale, unit):
    """Frames divided by their level make a flat without a unit: BUNIT = '' (which
    CCDData.read takes back as dimensionless); other scalings keep the frames' unit, as
    ccdproc keeps it."""
    ccds = [CCDData(a, unit="adu", meta={"EXPTIME": 2.0}) for a in frames]
    result = gpuflat.combine(ccds, scale=scale, backend="cpu")
    assert result.to_ccddata().unit == unit
    path = result.write(tmp_path / "master.fits")
    assert fits.getheader(path)["BUNIT"] == unit.to_string()
    assert CCDData.read(path).unit == unit


def test_bunit_adu_as_cameras_write_it(frames, tmp_path):
    """Files with BUNIT = 'ADU' (which astropy's units do not parse, and CCDData.read
    takes as adu): the product says adu, and reads back."""
    d = tmp_path / "cam"
    d.mkdir()
    for i, a in enumerate(frames):
        write_fits(d / f"f{i}.fits", a, IMAGETYP="FLAT", FILTER="V", BUNIT="ADU")
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "-q"]) == 0
    ccd = CCDData.read(out / "combined_flat_filter_V.fits")
    assert ccd.unit == u.dimensionless_unscaled and ccd.header["BUNIT"] == ""  # normalised
    np.testing.assert_allclose(ccd.data, reference(frames), rtol=1e-6)
    assert gpuflat.combine(sorted(str(p) for p in d.iterdir()), scale="none").unit == "adu"


def test_a_run_refuses_a_group_in_different_units(files, frames, tmp_path):
    other = str(files[0]).replace("flat-0", "electrons")
    write_fits(other, frames[0], IMAGETYP="FLAT", FILTER="V", BUNIT="electron")
    out = tmp_path / "out"
    assert main(["run", str(files[0]).rsplit("/", 1)[0], "-o", str(out), "-q"]) == 1
    assert not list(out.iterdir())


def test_a_result_writes_the_commands_product(files, tmp_path):
    """``CombineResult.write`` writes what ``gpuflat run`` writes for the same frames (the
    same data and header but for the date and the checksums), never over an existing
    file unless asked; ``to_ccddata`` carries the same header."""
    result = gpuflat.combine(files)
    path = tmp_path / "mine.fits"
    assert result.write(path) == path
    out = tmp_path / "out"
    assert main(["run", *files, "-o", str(out), "-q"]) == 0
    made = out / "combined_flat_filter_V.fits"
    skip = {"CHECKSUM", "DATASUM", "GPF_DATE"}
    with fits.open(path, checksum=True) as mine, fits.open(made) as theirs:
        assert [h.name for h in mine] == [h.name for h in theirs]
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a.data, b.data)
            assert [c for c in a.header.items() if c[0] not in skip] == [
                c for c in b.header.items() if c[0] not in skip
            ]
        header = mine[0].header
    assert header["COMBINED"] is True and header["NCOMBINE"] == 5
    assert header["IMCMB001"] == "flat-0.fits"
    assert header["SCALE001"] == pytest.approx(result.scales[0], rel=1e-15)  # 20 characters
    assert header["HIERARCH GPUFLAT SIGMA_LOW"] == 5.0 and header["FILTER"] == "V"
    ccd = CCDData.read(path)
    np.testing.assert_array_equal(ccd.data, result.image)
    np.testing.assert_array_equal(ccd.uncertainty.array, result.uncertainty)
    np.testing.assert_array_equal(ccd.mask, result.mask)
    with pytest.raises(FileExistsError):
        result.write(path)
    assert result.write(path, overwrite=True, compress=True) == path
    np.testing.assert_array_equal(CCDData.read(path).data, result.image)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    ccd = result.to_ccddata()
    assert isinstance(ccd.uncertainty, StdDevUncertainty)
    assert ccd.unit == u.dimensionless_unscaled and header["BUNIT"] == ""
    for key in ("COMBINED", "NCOMBINE", "IMCMB005", "GPF_VERS", "FILTER"):
        assert ccd.meta[key] == header[key]
    assert ccd.meta["SCALE005"] == pytest.approx(header["SCALE005"], rel=1e-15)
    assert ccd.meta["HIERARCH GPUFLAT METHOD"] == "average"
