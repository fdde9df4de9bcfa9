"""Late fusion of a demo's three models, and the per-frame bound (docs/FUSION.md, "Hard conditions").

    avfusion demo --hard --seed 0 --out runs/hard0                  # data, cache, av / video / audio models
    python docs/late_fusion.py --demo runs/hard0                    # evaluates each on val and test, then mixes

Each of the demo's models (``runs/{video,audio,av}/best``) is evaluated on the validation and the
test clips of its split (``avfusion evaluate --part val|test``, written to ``eval_val`` and
``eval_test`` beside it). Then, per dimension:

- **late fusion**: weights over [video only, audio only, audio-visual] (a grid of 0.05, summing to
  1) fitted on the validation frames for the CCC of the mix, scored on the test frames;
- **per-frame oracle**: at every test frame the prediction of the model closest to the label. No
  gate can know that; it bounds what choosing between the three models frame by frame could give.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = ("video", "audio", "av")


def evaluate(run: Path, part: str) -> Path:
    out = run / f"eval_{part}"
    if not (out / "predictions.csv").is_file():
        subprocess.run([sys.executable, "-m", "avfusion.cli.main", "evaluate", "--model", str(run / "best"),
                        "--config", str(run / "experiment.yaml"), "--part", part, "--out", str(out),
                        "--overwrite", "--no-plots"], check=True, stdout=subprocess.DEVNULL)
    return out / "predictions.csv"


def frames(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"video_id": str})
    return df[df.labelled].sort_values(["video_id", "frame"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> dict:
    from avfusion.metrics import ccc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, type=Path, help="a demo's folder (runs/ with video, audio, av)")
    args = ap.parse_args(argv)
    parts = {}
    for part in ("val", "test"):
        d = {m: frames(evaluate(args.demo / "runs" / m, part)) for m in MODELS}
        keys = d["av"][["video_id", "frame"]].to_numpy()
        if any(not np.array_equal(d[m][["video_id", "frame"]].to_numpy(), keys) for m in MODELS):
            raise SystemExit(f"{args.demo}: the three models were not evaluated on the same frames ({part})")
        parts[part] = d
    grid = [w for w in itertools.product(np.arange(0, 1.0001, 0.05), repeat=2) if w[0] + w[1] <= 1.0 + 1e-9]
    result: dict = {}
    for dim in ("valence", "arousal"):
        stacks = {p: (np.stack([parts[p][m][f"{dim}_pred"].to_numpy() for m in MODELS], 1),
                      parts[p]["av"][dim].to_numpy()) for p in parts}
        (pv, yv), (pt, yt) = stacks["val"], stacks["test"]
        best = max(grid, key=lambda w: ccc(pv @ np.array([w[0], w[1], 1 - w[0] - w[1]]), yv))
        w = np.array([best[0], best[1], 1 - best[0] - best[1]])
        pick = pt[np.arange(len(yt)), np.abs(pt - yt[:, None]).argmin(1)]
        result[dim] = {"weights (video, audio, av)": [round(float(x), 2) for x in w],
                       "late fusion": round(float(ccc(pt @ w, yt)), 3),
                       **{m: round(float(ccc(pt[:, i], yt)), 3) for i, m in enumerate(MODELS)},
                       "per-frame oracle": round(float(ccc(pick, yt)), 3)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
