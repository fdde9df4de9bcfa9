"""`avfusion bench readme`: the README's performance tables are rewritten from the results file,
between the markers and nowhere else, each with the machine it was measured on."""
import json

import pytest


def test_readme_tables_come_from_the_results(tmp_path):
    from avfusion.bench import README_END, README_START, update_readme

    results = {"predict_12s": {"date": "2026-11-30T10:00:00", "device": "Some CPU", "cpu_flags": ["avx512_bf16"],
                               "torch": "2.x", "threads": 2, "table": "| a |\n|---|\n| 1 |"},
               "unknown": {"table": "never shown"}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, tmp_path / "r.json")
    text = readme.read_text()
    assert "old table" not in text and "never shown" not in text
    assert text.startswith("# t\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "Some CPU (avx512_bf16), 2 threads" in text and "| 1 |" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, tmp_path / "r.json")


def test_whole_bench_writes_json_table_and_readme(tmp_path, one_thread):
    """`avfusion bench` without a section: a tiny run of some stages writes bench.json (machine
    beside the figures, median and spread, the summary ratios) and bench.md, and --readme puts the
    tables between the README's markers. Nothing is timed here, only the shape of the output."""
    from avfusion.bench import README_END, README_START
    from conftest import command

    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{README_START}\nold\n{README_END}\nafter\n")
    out = tmp_path / "bench"
    result = command("bench").main([
        "--out", str(out), "--threads", "1", "--stages", "decode", "train", "cuda", "--strict",
        "--repeats", "1", "--video-seconds", "0.2", "--train-clips", "3", "--train-frames", "90",
        "--train-variants", "no:4", "--train-epochs", "1", "--affwild-frames", "70",
        "--output", str(tmp_path / "none.json"), "--readme", str(readme)])
    data = json.loads((out / "bench.json").read_text())
    assert data["kind"] == "avfusion-bench" and data["quick"] is False
    assert set(data["machine"]) >= {"cpu", "cores", "cpu_flags", "torch", "threads"}
    assert list(data["stages"]) == ["decode", "train", "cuda"] == list(result["stages"])
    decode = data["stages"]["decode"]
    assert [r["decoder"].split(",")[0] for r in decode["rows"]] == ["decord", "PyAV", "OpenCV"]
    assert all(r["frames"] == 5 and set(r["frames_per_s"]) == {"median", "min", "max", "n"} for r in decode["rows"])
    train = data["stages"]["train"]
    (row,) = train["rows"]
    assert (row["precision"], row["batch"], row["stride"], row["fusion"]["n_layers"]) == ("no", 4, 16, 6)
    assert row["frames_per_epoch"] > 90 and train["affwild2"]["seconds_per_1M_frames"] > 0
    assert data["summary"]["afew_epoch_s"] == row["epoch_s"]["median"]
    assert data["stages"]["cuda"]["status"].startswith("not run")
    md = (out / "bench.md").read_text()
    assert "| decord, batches of 32 (get_batch) |" in md and "CUDA: not run" in md
    assert data["machine"]["cpu"] in md and "per 1M frames" in md
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{README_END}\nafter\n") and "### Decoding 720p video" in text


def test_readme_puts_a_whole_run_before_the_section_tables(tmp_path):
    from avfusion.bench import README_END, README_START, bench_markdown, update_readme

    run = {"kind": "avfusion-bench", "date": "2026-12-01T09:00:00", "quick": True, "quick_skips": ["compile"],
           "total_s": 100.0, "machine": {"cpu": "Some CPU", "cores": 2, "cpu_flags": ["avx512_bf16"], "torch": "2.x",
                                         "threads": 2},
           "summary": {"emonet_fast_over_fp32": {"1": 2.5, "32": 3.0}}, "stages": {
               "emonet": {"table": "| e |\n|---|\n| 7 |", "notes": ["int8: not run."]},
               "predict": {"error": "RuntimeError: boom"}}}
    (tmp_path / "bench.json").write_text(json.dumps(run))
    (tmp_path / "r.json").write_text(json.dumps({"zeroshot": {"device": "Old CPU", "table": "| z |"}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    update_readme(readme, tmp_path / "bench.json", tmp_path / "missing.json", tmp_path / "r.json")
    text = readme.read_text()
    assert text.index("Some CPU, 2 cores (avx512_bf16; no AMX)") < text.index("| 7 |") < text.index("| z |")
    assert "2.50× at batch 1" in text and "Quick mode skips: compile." in text and "Not measured: RuntimeError: boom" in text
    assert bench_markdown(run) in text
    with pytest.raises(FileNotFoundError, match="avfusion bench"):
        update_readme(readme, tmp_path / "missing.json")
