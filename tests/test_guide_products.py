"""Products as the astropy CCD guide's next steps find and read them: by
``ImageFileCollection(...).files_filtered(combined=True, ...)`` and with a plain
``CCDData.read(path)``, compressed (``--compress``) or not."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from conftest import flat_stack, write_fits

from gpuflat.cli import main


def native(a):
    return a.astype(a.dtype.newbyteorder("="))


@pytest.fixture
def night(tmp_path, rng):
    d = tmp_path / "night"
    d.mkdir()
    for filt in ("g''", "V"):
        for i, a in enumerate(flat_stack(rng, n=4, shape=(16, 16))):
            name = f"flat-{filt.strip(chr(39))}-{i}.fits"
            write_fits(d / name, a, IMAGETYP="FLAT", FILTER=filt, EXPTIME=3.0, BUNIT="adu")
    write_fits(d / "bias.fits", np.zeros((16, 16), np.float32), IMAGETYP="BIAS")
    return d


def test_compressed_products_are_found_and_read_as_the_guide_does(night, tmp_path):
    from ccdproc import ImageFileCollection

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    assert main(["run", str(night), "-o", str(plain), "-q"]) == 0
    assert main(["run", str(night), "-o", str(packed), "-q", "--compress"]) == 0
    for out in (plain, packed):
        masters = ImageFileCollection(out, keywords="*")
        for filt, name in (
            ("g''", "combined_flat_filter_gp.fits"),
            ("V", "combined_flat_filter_V.fits"),
        ):
            assert list(masters.files_filtered(combined=True, filter=filt)) == [name]
            assert list(masters.files_filtered(imagetyp="flat", filter=filt, exptime=3.0)) == [name]
        assert list(masters.summary["ncombine"]) == [4, 4]
    for name in ("combined_flat_filter_gp.fits", "combined_flat_filter_V.fits"):
        ccd, ref = CCDData.read(packed / name), CCDData.read(plain / name)
        assert ccd.unit == ref.unit == ""  # a normalised flat: dimensionless
        for got, want in ((ccd.data, ref.data), (ccd.uncertainty.array, ref.uncertainty.array),
                          (ccd.mask, ref.mask)):  # fmt: skip
            got, want = native(got), native(want)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()  # lossless
        assert ccd.header["NCOMBINE"] == 4 and ccd.header["COMBINED"] is True
        with fits.open(packed / name) as hdul:
            assert [type(h).__name__ for h in hdul] == ["PrimaryHDU"] + ["CompImageHDU"] * 3
            assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT", "NCOMBINE"]
            with fits.open(plain / name) as ref_hdul:
                np.testing.assert_array_equal(hdul["NCOMBINE"].data, ref_hdul["NCOMBINE"].data)
