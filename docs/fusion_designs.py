"""The README's "Fusion design" table: fusion variants of the tiny model on a demo's data.

    avfusion demo --seed 0 --out runs/demo          # data, feature cache and the default models
    python docs/fusion_designs.py --demo runs/demo  # each variant trained and evaluated on the same split

Every variant trains the tiny audio-visual model on the demo's cached features with the demo's
settings (seed, split, 15 epochs, best epoch by validation mean CCC) and one change to its fusion
config, then evaluates it on the held-out test clips, also with its audio and with its video
masked. Results are appended to ``<demo>/fusion_designs.jsonl`` and printed as a markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

# name -> (description, experiment overrides)
VARIANTS = {
    "joint_transformer": ("joint (early) fusion, Transformer (v0.1's design)",
                          ["model_overrides.fusion.design=joint", "model_overrides.fusion.temporal=transformer"]),
    "joint_transformer_md05": ("joint fusion, Transformer, modality dropout 0.5",
                               ["model_overrides.fusion.design=joint", "model_overrides.fusion.temporal=transformer",
                                "model_overrides.fusion.modality_dropout=0.5"]),
    "joint_gru": ("joint fusion, bidirectional GRU",
                  ["model_overrides.fusion.design=joint", "model_overrides.fusion.temporal=gru"]),
    "gated_learned_transformer": ("gated, Transformer, per-frame gate learned on training frames",
                                  ["model_overrides.fusion.gate=learned", "model_overrides.fusion.temporal=transformer"]),
    "gated_transformer": ("gated, Transformer, head weights fitted on validation",
                          ["model_overrides.fusion.temporal=transformer"]),
    "gated_gru": ("gated, bidirectional GRU, head weights fitted on validation (the tiny model)", []),
    "gated_lstm": ("gated, bidirectional LSTM, head weights fitted on validation",
                   ["model_overrides.fusion.temporal=lstm"]),
    "gated_gru_reliability": ("gated, bidirectional GRU, head weights and per-frame reliability fitted on validation",
                              ["model_overrides.fusion.reliability=true"]),
    "gated_gru_reliability_fd": ("gated, bidirectional GRU, per-frame reliability, frame-level modality dropout 0.3",
                                 ["model_overrides.fusion.reliability=true", "model_overrides.fusion.frame_dropout=0.3"]),
    # Speech detection off (the whole track heard, pauses included), with its audio-only reference.
    "speech_off_reliability_fd": ("as above, speech detection off (the whole track counts)",
                                  ["data.speech=off", "model_overrides.fusion.reliability=true",
                                   "model_overrides.fusion.frame_dropout=0.3"]),
    "speech_off_audio_only": ("*reference: audio-only model, speech detection off*",
                              ["data.speech=off", "model_overrides.mode=audio"]),
}


def run_variant(demo: Path, name: str) -> dict:
    import torch

    from avfusion.evaluation import evaluate_model
    from avfusion.factory import load_model
    from avfusion.train.experiment import load_experiment
    from avfusion.train.loop import train

    seed = json.loads((demo / "data" / "metadata.json").read_text())["config"]["seed"]
    out = demo / "fusion_designs" / name
    over = VARIANTS[name][1]
    cfg = load_experiment("tiny_synthetic", [f"data.root={demo / 'data'}", f"data.features={demo / 'features'}",
                                             f"train.seed={seed}", f"output_dir={out}", *over])
    t0 = time.time()
    torch.manual_seed(cfg.train.seed)
    train(cfg, log=False)
    rows = {}
    for mask in (None, "audio", "video"):
        res, *_ = evaluate_model(load_model(out / "best"), dataclasses.replace(cfg.data), "test",
                                 out / f"eval_{mask or 'none'}", mask=mask)
        f = res["frames"]
        rows[mask or "none"] = [f["ccc_valence"], f["ccc_arousal"], f["ccc_mean"]]
    best = json.loads((out / "results.json").read_text()).get("best", {})
    val = [best.get("ccc_valence"), best.get("ccc_arousal"), best.get("ccc_mean")]
    return {"variant": name, "seed": seed, "overrides": over, "val": val, "test": rows,
            "seconds": round(time.time() - t0)}


def table(results: list[dict]) -> str:
    lines = ["| fusion (audio-visual tiny model) | val mean | CCC valence | CCC arousal | mean | audio masked: "
             "valence | video masked: arousal |", "|---|---|---|---|---|---|---|"]
    for r in results:
        v, a, m = r["test"]["none"]
        lines.append(f"| {VARIANTS[r['variant']][0]} | {r['val'][2]:.3f} | {v:.3f} | {a:.3f} | {m:.3f} | "
                     f"{r['test']['audio'][0]:.3f} | {r['test']['video'][1]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="runs/demo", help="an `avfusion demo` output folder")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    demo = Path(args.demo)
    log = demo / "fusion_designs.jsonl"
    results = []
    for name in args.variants:
        r = run_variant(demo, name)
        with log.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        results.append(r)
        print(table([r]).splitlines()[-1], flush=True)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
