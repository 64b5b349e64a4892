"""gpuflat's exceptions: one base class, a few domain errors.

Bad parameter values raise ``ValueError`` and bad types ``TypeError``, as usual in Python;
the classes here are for problems with the data.
"""

from __future__ import annotations


class GpuflatError(Exception):
    """Base class of every error gpuflat raises about its inputs or environment."""


class NoFramesError(GpuflatError):
    """Nothing to combine: no input, or no frame matched the selection."""


class ShapeMismatchError(GpuflatError):
    """Frames of one combination do not have the same shape."""


class FrameReadError(GpuflatError):
    """A file cannot be read: missing, unreadable, truncated, or not an image."""


class BadLevelError(GpuflatError):
    """A frame's level (for scaling) is zero, negative or not finite."""


class BackendUnavailableError(GpuflatError):
    """The requested backend cannot run on this machine."""


class MissingDependencyError(GpuflatError):
    """An option needs an optional package that is not installed (the message says which
    and how to install it)."""


class CalibrationError(GpuflatError):
    """Raw frames cannot be calibrated as asked: a section outside the frame, a master of
    another shape, a missing exposure time or gain keyword."""
