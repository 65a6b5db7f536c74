"""Helpers for measuring and exploiting the linearity of RLVR training. The notebooks in `notebooks/` call these."""
from . import config, paths, results, run  # noqa: F401

__version__ = "0.1.0"
