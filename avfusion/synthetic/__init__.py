"""Synthetic talking faces with known valence and arousal (the demo's and the tests' data).

Nothing in :mod:`avfusion.data` imports this package: the readers know only the formats it writes.
"""
from .generator import SyntheticConfig, generate_dataset, load_metadata, parse_fps

__all__ = ["SyntheticConfig", "generate_dataset", "load_metadata", "parse_fps"]
