"""Sphinx configuration of gpuflat's documentation (``make docs``; warnings are errors).

The pages are the Markdown files of this folder (MyST), the API reference comes from the
numpydoc docstrings (autosummary), the command-line reference from the argparse parser
itself (sphinx-argparse), and the tutorial is a MyST notebook executed at every build
(myst-nb). The theme is pydata-sphinx-theme, astropy's.
"""

import argparse
import sys
from pathlib import Path

import gpuflat
from gpuflat._cli_parser import EXAMPLES, build_parser

sys.path.insert(0, str(Path(__file__).parent))  # cli.md's parser: conf.parser_for_docs


def parser_for_docs() -> argparse.ArgumentParser:
    """The command's parser without its epilogs (the examples, shown once, verbatim)."""
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        p.epilog = None
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return parser


# the examples of `gpuflat --help`, for cli.md (the parser's own text, never a copy)
_generated = Path(__file__).parent / "generated"
_generated.mkdir(exist_ok=True)
(_generated / "cli-examples.txt").write_text(EXAMPLES)

project = "gpuflat"
author = "the gpuflat developers"
copyright = "2026, " + author
release = version = gpuflat.__version__

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinxarg.ext",
]

# the documentation's own pages; the rest of this folder is material they link to
exclude_patterns = ["_build", "device", "**.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb"}
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](usage.md#farms) links to a section
# links to files of the repository outside docs/ (sources, bench scripts) are plain links
suppress_warnings = ["myst.xref_missing"]

nb_execution_mode = "force"  # the tutorial runs at every build: it shows what the code does
nb_execution_timeout = 600
nb_execution_raise_on_error = True

autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections say the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = "pydata_sphinx_theme"
html_title = f"gpuflat {version}"
html_theme_options = {"navigation_with_keys": False}
html_static_path = []
