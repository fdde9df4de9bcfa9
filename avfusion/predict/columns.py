"""Names in the prediction tables: the circumplex quadrants and EmoNet's expression columns
(shared by :mod:`.predictor` and :mod:`.live`)."""
from __future__ import annotations

import numpy as np

# EmoNet's expression classes in the order of its logits (AffectNet's 8, or its first 5).
EXPRESSIONS = {8: ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
               5: ("neutral", "happy", "sad", "surprise", "fear")}
# Quadrants of the valence/arousal circle (valence >= 0 is pleasant, arousal >= 0 activated).
QUADRANTS = ("pleasant-activated", "unpleasant-activated", "unpleasant-deactivated", "pleasant-deactivated")


def quadrant_names(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """The :data:`QUADRANTS` name of each (valence, arousal); None where either is NaN."""
    v, a = np.asarray(valence, dtype=np.float64), np.asarray(arousal, dtype=np.float64)
    k = np.where(v >= 0, np.where(a >= 0, 0, 3), np.where(a >= 0, 1, 2))
    out = np.array(QUADRANTS, dtype=object)[k]
    out[~(np.isfinite(v) & np.isfinite(a))] = None
    return out


def expression_names(k: int) -> tuple[str, ...]:
    """Column names of ``k`` expression probabilities: ``expr_<class>`` (EmoNet), else ``expr_<i>``."""
    return tuple(f"expr_{c}" for c in EXPRESSIONS.get(k, tuple(str(i) for i in range(k))))


__all__ = ["EXPRESSIONS", "QUADRANTS", "quadrant_names", "expression_names"]
