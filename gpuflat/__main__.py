"""``python -m gpuflat``: the command line."""

from .cli import console

console()
