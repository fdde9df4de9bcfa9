"""Clip- and actor-level splits, k-fold cross-validation, split files and the leak check."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from avfusion.data.records import VideoRecord
from avfusion.data.splits import (
    Split,
    check_split,
    kfold_split,
    load_split,
    save_split,
    select,
    split_records,
)


def make_records(n: int = 30, actors: int = 7, pairs: int = 2) -> list[VideoRecord]:
    """``n`` clips of ``actors`` actors with uneven clip counts; the last ``pairs`` pairs of clips
    are ``_left``/``_right`` halves of one source video (shared group, two people)."""
    recs = []
    for i in range(n):
        vid, group, actor = f"{i:03d}", None, f"actor{int(actors * ((i + 0.5) / n) ** 1.5)}"
        if i >= n - 2 * pairs:
            j, side = (i - (n - 2 * pairs)) // 2, ("left" if i % 2 == 0 else "right")
            vid, group, actor = f"pair{j}_{side}", f"pair{j}", f"pair{j}-{side}-person"
        recs.append(VideoRecord(
            vid, [f"{vid}/{k:05d}.png" for k in range(4)], 4, 25.0, np.zeros((4, 2)), np.ones(4, bool),
            actor=actor, group=group))
    return recs


def sides(split: Split) -> list[set[str]]:
    return [set(split.train), set(split.val), set(split.test)]


def test_split_by_clip_is_a_partition_and_keeps_groups_together() -> None:
    recs = make_records()
    s = split_records(recs, val=0.1, test=0.2, by="clip", seed=3)
    parts = sides(s)
    assert sum(len(p) for p in parts) == len(recs)
    assert set.union(*parts) == {r.video_id for r in recs}
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert 4 <= len(s.test) <= 8 and len(s.val) >= 2
    for j in range(2):  # both halves of one source video on the same side
        assert sum({f"pair{j}_left", f"pair{j}_right"} <= p for p in parts) == 1
    # reproducible for a seed, different for another
    assert split_records(recs, 0.1, 0.2, "clip", seed=3) == s
    assert split_records(recs, 0.1, 0.2, "clip", seed=4).test != s.test


def test_split_by_actor_keeps_each_actor_on_one_side() -> None:
    recs = make_records()
    actor = {r.video_id: r.actor for r in recs}
    s = split_records(recs, val=0.15, test=0.25, by="actor", seed=0)
    actor_sides = [{actor[c] for c in p} for p in sides(s)]
    assert all(not (a & b) for i, a in enumerate(actor_sides) for b in actor_sides[i + 1:])
    assert all(actor_sides)
    assert s.by == "actor" and s.seed == 0


def test_split_by_actor_needs_actors() -> None:
    recs = make_records()
    recs[5].actor = None
    with pytest.raises(ValueError, match="cannot split by actor: 1 clip"):
        split_records(recs, by="actor")


@pytest.mark.parametrize("by", ["clip", "actor"])
def test_kfold_covers_every_clip_exactly_once(by: str) -> None:
    recs = make_records(40, actors=9)
    s = kfold_split(recs, k=4, by=by, seed=1)
    assert len(s.folds) == 4 and all(s.folds)
    counts = Counter(c for f in s.folds for c in f)
    assert set(counts) == {r.video_id for r in recs} and set(counts.values()) == {1}
    if by == "actor":
        actor = {r.video_id: r.actor for r in recs}
        folds_of_actor = Counter(a for a, _ in {(actor[c], i) for i, f in enumerate(s.folds) for c in f})
        assert set(folds_of_actor.values()) == {1}  # every actor in exactly one fold
    for i in range(4):
        f = s.fold(i, val=0.1, records=recs)
        check_split(f, recs, by_actor=(by == "actor"))
        assert set(f.test) == set(s.folds[i])
        assert set(f.train) | set(f.val) | set(f.test) == {r.video_id for r in recs}
        assert f.val and not set(f.val) & set(f.train)


def test_kfold_balances_fold_sizes() -> None:
    recs = make_records(40)
    sizes = [len(f) for f in kfold_split(recs, k=5, by="clip", seed=0).folds]
    assert max(sizes) - min(sizes) <= 2  # groups of two (pairs) can tip a fold by one


def test_kfold_needs_enough_groups() -> None:
    with pytest.raises(ValueError, match="cannot make 8 folds"):
        kfold_split(make_records(12, actors=3), k=8, by="actor")


def test_split_file_round_trip(tmp_path: Path) -> None:
    recs = make_records()
    s = split_records(recs, by="actor", seed=7)
    p = save_split(s, tmp_path / "splits" / "s.json")
    data = json.loads(p.read_text())
    # (with the fractions asked for and those the whole actors reached)
    assert set(data) == {"train", "val", "test", "by", "seed", "asked", "fractions"} and data["by"] == "actor"
    assert data["fractions"] == {p: round(len(getattr(s, p)) / len(recs), 4) for p in ("train", "val", "test")}
    assert load_split(p) == s
    k = kfold_split(recs, k=3, seed=2)
    p2 = save_split(k, tmp_path / "k.json")
    assert set(json.loads(p2.read_text())) == {"folds", "by", "seed"}
    assert load_split(p2) == k
    assert [r.video_id for r in select(recs, s.test)] == s.test


def test_check_split_refuses_leaks_and_names_them() -> None:
    recs = make_records()
    s = split_records(recs, seed=0)
    leaky = Split(train=s.train + [s.test[0]], val=s.val, test=s.test)
    with pytest.raises(ValueError, match=rf"clip\(s\) on more than one side: '{s.test[0]}' in test\+train"):
        check_split(leaky, recs)
    # an actor on both sides is refused only when asked
    a0 = [r.video_id for r in recs if r.actor == "actor0"]
    mixed = Split(train=[r.video_id for r in recs if r.video_id != a0[0]], val=[], test=[a0[0]])
    check_split(mixed, recs)  # fine at clip level
    with pytest.raises(ValueError, match=r"1 actor\(s\) on more than one side: 'actor0' in test\+train"):
        check_split(mixed, recs, by_actor=True)
    # the two halves of one source video on different sides
    halves = Split(train=[c for r in recs if (c := r.video_id) != "pair0_right"], val=[], test=["pair0_right"])
    with pytest.raises(ValueError, match=r"source video\(s\) on more than one side: 'pair0'"):
        check_split(halves, recs)
    with pytest.raises(ValueError, match=r"not in the dataset: \['zzz'\]"):
        check_split(Split(train=["zzz"], val=[], test=[]), recs)


def test_split_file_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"train": ["a"], "test": ["b"]}))
    with pytest.raises(ValueError, match=r"bad\.json: missing key\(s\) \['val'\]"):
        load_split(p)
    p.write_text(json.dumps({"train": [], "val": [], "test": [], "by": "frame"}))
    with pytest.raises(ValueError, match="'by' must be 'clip' or 'actor'"):
        load_split(p)


def test_no_frame_level_split_is_offered() -> None:
    import avfusion.data.splits as splits

    assert "neighbouring frames" in splits.__doc__
    with pytest.raises(ValueError, match="'clip' or 'actor'"):
        split_records(make_records(), by="frame")


def test_split_file_by_clip_with_config_by_actor_is_refused(tmp_path):
    from avfusion.data.build import DataConfig, make_split
    from avfusion.data.splits import Split, save_split

    recs = [VideoRecord(f"c{i}", [f"c{i}/{k}.png" for k in range(4)], 4, 25.0, np.zeros((4, 2)), np.ones(4, bool),
                        actor=f"a{i // 2}") for i in range(6)]
    # c0 and c1 share actor a0 but sit on both sides: fine by clip, a leak by actor.
    path = save_split(Split(train=["c0", "c2", "c3", "c4"], val=["c1"], test=["c5"], by="clip", seed=0),
                      tmp_path / "split.json")
    with pytest.raises(ValueError, match="split_by=actor"):
        make_split(DataConfig(split_file=str(path), split_by="actor"), recs)
    assert make_split(DataConfig(split_file=str(path), split_by="clip"), recs).val == ["c1"]


def test_manifest_rows_of_one_video_stay_together(tmp_path):
    """Two manifest rows that are one video file (one per person) are one group for every split."""
    from conftest import write_grey_video

    from avfusion.data.manifest import load_manifest
    from avfusion.data.splits import split_records

    for i in range(4):
        write_grey_video(tmp_path / f"v{i}.mp4", 4, audio=False)
    rows = [f"p{i},v{i}.mp4," for i in range(4)] + ["p4_left,v3.mp4,", "p4_right,v3.mp4,"]
    (tmp_path / "m.csv").write_text("video_id,video_path,labels_path\n" + "\n".join(rows) + "\n")
    recs = load_manifest(tmp_path / "m.csv")
    groups = {r.video_id: r.group for r in recs}
    assert groups["p4_left"] == groups["p4_right"] == groups["p3"]
    for seed in range(10):
        split = split_records(recs, val=0.3, test=0.0, seed=seed)
        sides = {p for p in ("train", "val") for v in split.ids(p) if v in ("p3", "p4_left", "p4_right")}
        assert len(sides) == 1


def test_whole_groups_that_miss_the_fractions_warn_or_refuse() -> None:
    """Whole actors cannot always meet the fractions asked: one warning with the sizes reached, an
    error with strict; the split records what it reached. Within the tolerance: silence."""
    import warnings

    from avfusion.data.splits import SPLIT_TOLERANCE

    recs = make_records()
    with pytest.warns(RuntimeWarning, match=r"cannot meet the fractions asked within 5 points: train \d+ clips"):
        s = split_records(recs, by="actor", seed=7)
    assert s.asked == {"train": 0.7, "val": 0.1, "test": 0.2}
    assert any(abs(s.reached[p] - s.asked[p]) > SPLIT_TOLERANCE for p in s.asked)
    with pytest.raises(ValueError, match="--strict-split made this an error"):
        split_records(recs, by="actor", seed=7, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_clip = split_records(recs, val=0.2, test=0.2, by="clip", seed=0, strict=True)
    assert all(abs(by_clip.reached[p] - by_clip.asked[p]) <= SPLIT_TOLERANCE for p in by_clip.asked)
