"""gpuflat: master flat fields the way the astropy CCD guide combines them, fast.

>>> import gpuflat
>>> result = gpuflat.combine(["flat1.fits", "flat2.fits", "flat3.fits"])  # doctest: +SKIP
>>> result.image, result.uncertainty, result.count, result.mask, result.scales  # doctest: +SKIP
"""

from ._badpix import MaskParams, ccdmask, hot_pixels
from ._calibrate import Calibration
from ._compare import compare_flats
from ._config import CombineConfig
from ._mosaic import MosaicResult
from ._pipeline import CombineResult
from ._version import __version__
from .api import combine, combine_mosaic
from .errors import (
    BackendUnavailableError,
    BadLevelError,
    CalibrationError,
    FrameReadError,
    GpuflatError,
    NoFramesError,
    ShapeMismatchError,
)

__all__ = [
    "BackendUnavailableError",
    "BadLevelError",
    "Calibration",
    "CalibrationError",
    "CombineConfig",
    "CombineResult",
    "FrameReadError",
    "GpuflatError",
    "MaskParams",
    "MosaicResult",
    "NoFramesError",
    "ShapeMismatchError",
    "__version__",
    "ccdmask",
    "combine",
    "combine_mosaic",
    "compare_flats",
    "hot_pixels",
]
