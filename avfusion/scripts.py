"""Run the repository's scripts (scripts/*.py) from the ``avfusion`` command.

The scripts stay the documented entry points (``accelerate launch scripts/train.py ...``); the
command-line wrappers load them by path so both run the same ``main(argv)``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (its ``main(argv)`` is the entry point)."""
    path = SCRIPTS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the avfusion command runs the repository's scripts, "
                                "so install from a clone with `pip install -e .`")
    spec = importlib.util.spec_from_file_location(f"avfusion_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module
