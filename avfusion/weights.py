"""Every weight file goes through here: one safe reader, one strict loader.

A weight file's journey: :func:`read_weights` (safetensors, or ``torch.load(weights_only=True)``
with only the non-tensor types a family needs allow-listed) -> the owning encoder's filter
function (unwrap, strip prefixes, drop heads, resize position embeddings; it lives beside the
architecture, as ``emonet_filter_fn`` / ``mae_filter_fn``) -> :func:`load_strict`, which loads
every key or names the file and lists the missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

PathLike = Union[str, Path]
# A filter turns whatever a file holds into the module's own keys; it returns that state dict and
# the keys it supplied itself (e.g. a LayerNorm the file does not have, at its documented start).
FilterFn = Callable[[Any, nn.Module, str], "tuple[dict[str, torch.Tensor], set[str]]"]


@dataclass
class LoadReport:
    """What :func:`load_strict` loaded: the source and the keys the filter supplied itself."""

    source: str
    n_tensors: int
    filled: set[str] = field(default_factory=set)


def read_weights(path: PathLike, family: str = "weight", safe_globals: Iterable[type] = ()) -> Any:
    """The content of a weight file, read without running code from it.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` and ``safe_globals`` allow-listed for this load only.
    Raises FileNotFoundError / ValueError with the file's name and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{family} file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise ValueError(f"{path}: not a readable safetensors {family} file ({type(e).__name__}: "
                             f"{_first_line(e)}); re-export or re-download it") from None
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt / non-weights files
        raise ValueError(
            f"{path}: cannot be read as a {family} file with torch.load(weights_only=True): "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from e


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def list_keys(keys: list[str], limit: int = 10) -> str:
    """``a, b, c, ... (n more)``: key lists in error messages stay one line."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def key_problems(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped keys of ``given`` against ``expected``, as phrases."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k} {tuple(given[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in given and given[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {list_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {list_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {list_keys(mismatched)}")
    return problems


def load_strict(
    module: nn.Module,
    source: Union[PathLike, Mapping[str, Any]],
    filter_fn: Optional[FilterFn] = None,
    family: str = "weight",
    safe_globals: Iterable[type] = (),
) -> LoadReport:
    """Load a file (or an in-memory state dict) into ``module``, every key or nothing.

    ``filter_fn(raw, module, source_name)`` maps the file's content to the module's keys (see the
    module docstring); without one the content must already be a flat state dict. Raises a
    ValueError naming the source when anything does not fit.
    """
    if isinstance(source, Mapping):
        name, raw = f"{family} state dict", source
    else:
        name, raw = str(source), read_weights(source, family, safe_globals)
    filled: set[str] = set()
    if filter_fn is not None:
        sd, filled = filter_fn(raw, module, name)
    else:
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in raw.items()):
            raise ValueError(f"{name}: expected a state dict (names -> tensors), got {type(raw).__name__}")
        sd = dict(raw)
    expected = module.state_dict()
    problems = key_problems(expected, sd)
    if problems:
        raise ValueError(f"{name} does not fit {type(module).__name__}: " + "; ".join(problems) + ".")
    module.load_state_dict(sd, strict=True)
    return LoadReport(name, len(sd), set(filled))


__all__ = ["LoadReport", "read_weights", "load_strict", "key_problems", "list_keys", "FilterFn"]
