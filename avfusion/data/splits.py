"""Leakage-free train/val/test splits: by clip or by actor, and k-fold cross-validation.

Why there is no frame-level split: neighbouring frames of a clip are nearly identical images with
nearly identical labels, so a random split of frames puts near-copies of every test frame in the
training set. A model then scores by recognising the clip, not the emotion; this is how near-perfect
CCC figures get reported on AFEW-VA (docs/FORMATS.md). The smallest unit a split may cut is a clip; clips
cut from one source video (Aff-Wild2's ``_left``/``_right``, which share the scene and the audio)
travel together as one *group*; splitting by actor keeps every clip of a person on one side.

A split is written to and read from JSON so an experiment can be rerun exactly::

    {"train": [ids], "val": [ids], "test": [ids], "by": "clip" | "actor", "seed": 0,
     "asked": {"train": 0.7, "val": 0.1, "test": 0.2}, "fractions": {...the same, reached}}
    {"folds": [[ids], [ids], ...], "by": "clip" | "actor", "seed": 0}      (k-fold)
"""
from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..files import write_text_atomic
from .records import DataKeyError, VideoRecord

PARTS = ("train", "val", "test")


@dataclass
class Split:
    """Clip ids per part (``train``/``val``/``test``) or per fold, and how they were drawn."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    by: str = "clip"
    seed: Optional[int] = None
    folds: Optional[list[list[str]]] = None
    # The fractions asked for and those the whole groups reached (what split.json records).
    asked: Optional[dict[str, float]] = None
    reached: Optional[dict[str, float]] = None

    def fold(self, i: int, val: float = 0.0, records: Optional[Sequence[VideoRecord]] = None) -> "Split":
        """Fold ``i`` as a train/val/test split: test = fold ``i``, train = every other fold.

        ``val`` > 0 moves that fraction of the training groups (actors when ``by == "actor"``) to
        ``val``, drawn with this split's seed; grouping needs ``records``.
        """
        if not self.folds:
            raise ValueError("this split has no folds (make one with kfold_split)")
        if not 0 <= i < len(self.folds):
            raise IndexError(f"fold {i} out of range: the split has {len(self.folds)} folds")
        test = list(self.folds[i])
        train = [c for j, f in enumerate(self.folds) if j != i for c in f]
        out = Split(train=train, val=[], test=test, by=self.by, seed=self.seed)
        if val > 0:
            if records is None:
                raise ValueError("fold(val > 0) needs the records to keep groups together")
            keep = set(train)
            sub = [r for r in records if r.video_id in keep]
            groups = _groups(sub, self.by)
            order = _shuffled(sorted(groups), self.seed)
            val_keys = _take(order, groups, val * len(sub))
            out.val = sorted(c for g in val_keys for c in groups[g])
            moved = set(out.val)
            out.train = [c for c in train if c not in moved]
        return out

    def ids(self, part: str) -> list[str]:
        """The ids of ``train``, ``val`` or ``test``."""
        if part not in PARTS:
            raise ValueError(f"unknown split part {part!r}: expected one of {PARTS}")
        return list(getattr(self, part))

    def to_dict(self) -> dict:
        d: dict = {"by": self.by, "seed": self.seed}
        if self.folds is not None:
            d["folds"] = [list(f) for f in self.folds]
        else:
            d.update(train=list(self.train), val=list(self.val), test=list(self.test))
            n = len(self.train) + len(self.val) + len(self.test)
            if n:
                d["fractions"] = self.reached or {p: round(len(getattr(self, p)) / n, 4) for p in PARTS}
            if self.asked is not None:
                d["asked"] = dict(self.asked)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "split") -> "Split":
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object")
        by = d.get("by", "clip")
        if by not in ("clip", "actor"):
            raise ValueError(f"{where}: 'by' must be 'clip' or 'actor', got {by!r}")
        if "folds" in d:
            folds = d["folds"]
            if not isinstance(folds, list) or not all(isinstance(f, list) for f in folds):
                raise ValueError(f"{where}: 'folds' must be a list of lists of clip ids")
            return cls(by=by, seed=d.get("seed"), folds=[[str(c) for c in f] for f in folds])
        missing = [p for p in PARTS if p not in d]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; a split has train, val, test (or folds)")
        return cls(*([str(c) for c in d[p]] for p in PARTS), by=by, seed=d.get("seed"),
                   asked=d.get("asked"), reached=d.get("fractions"))


def _groups(records: Sequence[VideoRecord], by: str) -> dict[str, list[str]]:
    """Unit of assignment -> clip ids. By clip the unit is the record's group (source video)."""
    if by not in ("clip", "actor"):
        raise ValueError(f"split 'by' must be 'clip' or 'actor', got {by!r}")
    groups: dict[str, list[str]] = defaultdict(list)
    if by == "actor":
        unknown = [r.video_id for r in records if r.actor is None]
        if unknown:
            raise ValueError(
                f"cannot split by actor: {len(unknown)} clip(s) have no actor (e.g. {unknown[:5]}); "
                "split by clip instead, or give actors (manifest column 'actor')")
    # A source video shared by two clips ties their actors together too (union of both relations).
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        keys = ["g:" + str(r.group)] + (["a:" + str(r.actor)] if by == "actor" else [])
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
        find(keys[0])
    for r in records:
        groups[find("g:" + str(r.group))].append(r.video_id)
    return {k: sorted(v) for k, v in groups.items()}


def _shuffled(keys: list[str], seed: Optional[int]) -> list[str]:
    rng = np.random.default_rng(seed)
    return [keys[i] for i in rng.permutation(len(keys))]


def _take(order: list[str], groups: dict[str, list[str]], target: float) -> list[str]:
    """Pop groups from ``order`` until at least ``target`` clips are taken (at least one group)."""
    taken: list[str] = []
    n = 0
    while order and (n < target or not taken) and target > 0:
        g = order.pop(0)
        taken.append(g)
        n += len(groups[g])
    return taken


# How far (in fractions of the clips) a part made of whole groups may miss the size asked for
# before the split says so (a warning, or an error with `strict`).
SPLIT_TOLERANCE = 0.05


def split_records(records: Sequence[VideoRecord], val: float = 0.1, test: float = 0.2,
                  by: str = "clip", seed: int = 0, strict: bool = False) -> Split:
    """Random train/val/test split of whole clips (``by="clip"``) or whole actors (``"actor"``).

    ``val`` and ``test`` are fractions of the clips; groups are taken whole, so the sizes are met
    approximately. Clips of one source video (``record.group``) always stay together. A part that
    misses its fraction by more than :data:`SPLIT_TOLERANCE` gives one warning with the sizes
    reached (``strict``: a ValueError); the split records both (``asked``, ``reached``).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val={val} and test={test} must be fractions summing to less than 1")
    groups = _groups(records, by)
    order = _shuffled(sorted(groups), seed)
    n = len(records)
    test_g = _take(order, groups, test * n)
    val_g = _take(order, groups, val * n)
    if not order:
        raise ValueError(
            f"{len(groups)} {by} group(s) are too few for val={val}, test={test}: nothing left to train on")
    ids = lambda gs: sorted(c for g in gs for c in groups[g])  # noqa: E731
    split = Split(train=ids(order), val=ids(val_g), test=ids(test_g), by=by, seed=seed,
                  asked={"train": round(1 - val - test, 4), "val": val, "test": test})
    split.reached = {p: round(len(split.ids(p)) / max(1, n), 4) for p in PARTS}
    check_split(split, records, by_actor=(by == "actor"))
    missed = [p for p in PARTS if abs(split.reached[p] - split.asked[p]) > SPLIT_TOLERANCE]
    if missed:
        sizes = ", ".join(f"{p} {len(split.ids(p))} clips ({100 * split.reached[p]:.0f} %, asked "
                          f"{100 * split.asked[p]:.0f} %)" for p in PARTS)
        text = (f"a split of {n} clips into {len(groups)} whole {by} group(s) cannot meet the fractions asked "
                f"within {100 * SPLIT_TOLERANCE:.0f} points: {sizes}")
        if strict:
            raise ValueError(f"{text}; change data.val_fraction / data.test_fraction, split by clip, or give a "
                             "split file (--strict-split made this an error)")
        warnings.warn(f"{text}; the fractions reached are in split.json (--strict-split makes this an error)",
                      RuntimeWarning, stacklevel=2)
    return split


def kfold_split(records: Sequence[VideoRecord], k: int = 5, by: str = "clip", seed: int = 0) -> Split:
    """``k`` folds: every clip in exactly one fold; groups (or actors) never cut across folds.

    Groups are dealt, largest first (ties in seeded random order), to the fold with fewest clips so
    far, which balances folds when actors have very different numbers of clips.
    """
    groups = _groups(records, by)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if len(groups) < k:
        raise ValueError(f"only {len(groups)} {by} group(s): cannot make {k} folds")
    order = _shuffled(sorted(groups), seed)
    order.sort(key=lambda g: -len(groups[g]))  # stable: keeps the seeded order among equal sizes
    folds: list[list[str]] = [[] for _ in range(k)]
    for g in order:
        i = min(range(k), key=lambda j: (len(folds[j]), j))
        folds[i].extend(groups[g])
    split = Split(by=by, seed=seed, folds=[sorted(f) for f in folds])
    check_split(split, records, by_actor=(by == "actor"))
    return split


def check_split(split: Split, records: Sequence[VideoRecord], by_actor: bool = False) -> None:
    """Refuse a split that leaks: a clip (or source video, or with ``by_actor`` an actor) on two sides.

    Also refuses ids that no record has (a split file made for another dataset). Raises ValueError
    naming the offenders.
    """
    parts = ({f"fold {i}": list(f) for i, f in enumerate(split.folds)} if split.folds is not None
             else {p: split.ids(p) for p in PARTS})
    by_id = {r.video_id: r for r in records}
    problems = []
    unknown = sorted({c for ids in parts.values() for c in ids if c not in by_id})
    if unknown:
        problems.append(f"{len(unknown)} id(s) not in the dataset: {unknown[:10]}")

    def owners(key: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for part, ids in parts.items():
            for c in ids:
                if c in by_id:
                    v = c if key == "clip" else getattr(by_id[c], key)
                    if v is not None:
                        out[str(v)].add(part)
        return out

    dup_in_part = {p: sorted(c for c, n in Counter(ids).items() if n > 1) for p, ids in parts.items()}
    for p, d in dup_in_part.items():
        if d:
            problems.append(f"clip(s) listed twice in {p}: {d[:10]}")
    group_sizes = Counter(str(r.group) for r in records)
    checks = [("clip", "clip"), ("group", "source video")] + ([("actor", "actor")] if by_actor else [])
    for key, what in checks:
        both = {v: sorted(ps) for v, ps in owners(key).items() if len(ps) > 1}
        if key == "group":  # a one-clip group on two sides was already reported as a clip
            both = {v: ps for v, ps in both.items() if group_sizes[v] > 1}
        if both:
            shown = ", ".join(f"{v!r} in {'+'.join(ps)}" for v, ps in sorted(both.items())[:10])
            problems.append(f"{len(both)} {what}(s) on more than one side: {shown}")
    if problems:
        raise ValueError("leaky or invalid split: " + "; ".join(problems))


def save_split(split: Split, path: str | Path) -> Path:
    """Write ``split`` as JSON (see the module docstring for the format)."""
    return write_text_atomic(path, json.dumps(split.to_dict(), indent=1))


def load_split(path: str | Path) -> Split:
    """Read a split file written by :func:`save_split` (or by hand in the same format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return Split.from_dict(d, where=str(path))


def select(records: Sequence[VideoRecord], ids: Sequence[str]) -> list[VideoRecord]:
    """The records whose ids are listed, in the order of ``ids``; unknown ids are an error."""
    by_id = {r.video_id: r for r in records}
    missing = [c for c in ids if c not in by_id]
    if missing:
        raise DataKeyError(f"{len(missing)} split id(s) not in the dataset: {missing[:10]}")
    return [by_id[c] for c in ids]


__all__ = ["Split", "split_records", "kfold_split", "check_split", "save_split", "load_split", "select"]
