"""`avfusion bench`: one run writes bench.json and bench.md, both starting with the machine the
figures hold for; the per-frame figures come from the runner predict uses; `avfusion bench readme`
rewrites the README's section between the markers and nowhere else. Nothing is timed here, only
the shape of the output."""
import argparse
import json

import numpy as np
import pytest

MACHINE_KEYS = {"cpu", "cpu_id", "cpu_class", "cores", "cpu_flags", "torch", "openvino", "threads"}


def test_whole_bench_writes_json_markdown_and_readme(tmp_path, one_thread):
    from avfusion.bench import README_END, README_START
    from conftest import command

    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{README_START}\nold\n{README_END}\nafter\n")
    out = tmp_path / "bench"
    result = command("bench").main([
        "--out", str(out), "--threads", "1", "--stages", "decode", "train", "cuda", "--strict",
        "--repeats", "1", "--video-seconds", "0.2", "--train-clips", "3", "--train-frames", "90",
        "--train-variants", "no:4", "--train-epochs", "1", "--affwild-frames", "70", "--readme", str(readme)])
    data = json.loads((out / "bench.json").read_text())
    assert list(data)[0] == "machine" and set(data["machine"]) >= MACHINE_KEYS
    assert data["kind"] == "avfusion-bench" and data["version"] == 2 and data["quick"] is False
    assert list(data["stages"]) == ["decode", "train", "cuda"] == list(result["stages"])
    decode = data["stages"]["decode"]
    assert [r["decoder"].split(",")[0] for r in decode["rows"]] == ["decord", "PyAV", "OpenCV"]
    assert all(r["frames"] == 5 and set(r["frames_per_s"]) == {"median", "min", "max", "n"} for r in decode["rows"])
    (row,) = data["stages"]["train"]["rows"]
    assert (row["precision"], row["batch"], row["stride"], row["fusion"]["n_layers"]) == ("no", 4, 16, 6)
    assert data["summary"]["afew_epoch_s"] == row["epoch_s"]["median"]
    assert data["stages"]["cuda"]["status"].startswith("not run")
    md = (out / "bench.md").read_text()
    first = md.splitlines()[0]
    assert data["machine"]["cpu"] in first and "torch " in first and "openvino " in first and "threads" in first
    assert "| decord, batches of 32 (get_batch) |" in md and "CUDA: not run" in md and "per 1M frames" in md
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{README_END}\nafter\n") and first in text
    assert "### Decoding 720p video" not in text and "benchmarks/bench.md" in text  # the README: one table, a link


def test_frames_stage_times_the_runner_under_each_runtime(tmp_path, one_thread):
    """Rows per runtime and precision from FrameRunner itself (its description), deviation per face
    from torch float32, and OpenVINO's construction converting once, then reading its cache."""
    from avfusion.bench import bench_network
    from avfusion.inference.openvino_net import openvino_available
    from test_runtime import FRAME_BY_FRAME, make

    runtimes = ["torch"] + (["openvino"] if openvino_available() else [])
    o = argparse.Namespace(runtimes=runtimes, compile=False, repeats=1)
    faces = np.random.default_rng(0).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)
    rows = bench_network("tiny EmoNet", make(FRAME_BY_FRAME), [1, 3], o, faces, tmp_path)
    variants = ["torch_fp32", "torch_bf16"] + (["openvino_fp32", "openvino_bf16"] if len(runtimes) > 1 else [])
    assert [(r["variant"], r["batch"]) for r in rows] == [(v, b) for b in (1, 3) for v in variants]
    for r in rows:
        assert r["description"].startswith(r["runtime"]) and len(r["deviation"]) == 2
        assert r["frames_per_s"]["n"] == 1 and r["x_torch_fp32"] > 0
    assert rows[0]["deviation"] == [0.0, 0.0] and max(rows[1]["deviation"]) < 5e-2
    ov = [r for r in rows if r["runtime"] == "openvino"]
    if ov:
        assert [r["converted"] for r in ov] == [True, False, False, False]  # f32 and bf16 share the graph
        assert max(ov[0]["deviation"]) < 1e-4 and all(r["x_torch_same_precision"] > 0 for r in ov)


def test_readme_section_is_the_runs_opening_and_end_to_end_table(tmp_path):
    from avfusion.bench import README_END, README_START, bench_markdown, update_readme

    run = {"machine": {"cpu": "Some CPU", "cpu_id": "GenuineIntel family 6 model 207", "cpu_class": "amx",
                       "cores": 2, "cpu_flags": ["avx512_bf16", "amx_bf16"], "torch": "2.x", "openvino": None,
                       "threads": 2},
           "kind": "avfusion-bench", "version": 2, "date": "2026-12-01T09:00:00", "quick": True,
           "quick_skips": ["compile"], "total_s": 100.0,
           "summary": {"emonet_batch16_x_torch_fp32": {"torch_fp32": 1.0, "openvino_bf16": 4.5},
                       "predict_over_bare": {"emonet_8, stride 1, openvino": 0.9}},
           "stages": {"frames": {"table": "| e |\n|---|\n| 7 |", "notes": ["a note."]},
                      "predict": {"error": "RuntimeError: boom"},
                      "experts": {"table": "| x |\n|---|\n| 3 |", "notes": ["experts note."]}}}
    (tmp_path / "bench.json").write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold\n{README_END}\nafter\n")
    update_readme(readme, tmp_path / "bench.json")
    text = readme.read_text()
    md = bench_markdown(run)
    assert md.startswith("_Some CPU (GenuineIntel family 6 model 207), 2 cores, class amx (avx512_bf16, amx_bf16); "
                         "torch 2.x, openvino not installed, 2 threads.")
    assert "OpenVINO bf16 4.50×" in md and "0.90 (emonet_8, stride 1, openvino)" in md
    assert "Quick mode skips: compile." in md and "Not measured: RuntimeError: boom" in md
    assert "| 7 |" in md and "| 3 |" in md  # bench.md: every stage
    # The README: bench.md's opening (machine, summary) and the experts' table, then a link to bench.md.
    section = text.split(README_START + "\n", 1)[1].split("\n" + README_END, 1)[0]
    assert text.startswith("before\n") and text.endswith(f"{README_END}\nafter\n")
    head = md.split("### ", 1)[0].rstrip()
    assert section.startswith(head) and "0.90 (emonet_8, stride 1, openvino)" in section
    experts = md.split("### The pretrained experts", 1)[1].split("\n### ", 1)[0]
    assert ("### The pretrained experts" + experts).rstrip() in section
    assert "| 7 |" not in section and "boom" not in section and "benchmarks/bench.md" in section
    with pytest.raises(FileNotFoundError, match="avfusion bench"):
        update_readme(readme, tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({"predict_12s": {"table": "| a |"}}))
    with pytest.raises(ValueError, match="version-2"):
        update_readme(readme, tmp_path / "old.json")
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, tmp_path / "bench.json")
