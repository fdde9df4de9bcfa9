"""`avfusion demo`, the README's main job, end to end at a small size."""
import json

import pytest

from avfusion.cli.main import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys, one_thread):
    """The hard variant (CI runs the normal one from the README's command)."""
    out = tmp_path / "demo"
    assert main(["demo", "--hard", "--out", str(out), "--clips", "16", "--frames", "32", "--epochs", "1",
                 "--workers", "1", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "| audio-visual |" in printed and "| video only |" in printed and "| audio only |" in printed
    assert "synthetic data (hard conditions)" in printed
    assert all("hard" in c for c in json.loads((out / "data" / "metadata.json").read_text())["clips"])
    summary = json.loads((out / "demo_results.json").read_text())
    assert set(summary) == {"av", "video", "audio", "av_no_audio", "av_no_video", "av_face_blanked_mid",
                            "audio_only_mid", "av_audio_silenced_mid", "video_only_mid"}
    # One sense removed over the middle third: scored on the same frames as the other sense's model.
    assert summary["av_face_blanked_mid"]["n_frames"] == summary["audio_only_mid"]["n_frames"] > 0
    assert summary["av_audio_silenced_mid"]["n_frames"] == summary["video_only_mid"]["n_frames"] > 0
    assert "| audio-visual, audio masked |" in printed and "| audio-visual, video masked |" in printed
    masked = json.loads((out / "runs" / "av" / "eval_no_audio" / "metrics.json").read_text())
    assert masked["masked"] == "audio" and masked["frames"]["ccc_mean"] == pytest.approx(summary["av_no_audio"]["ccc_mean"])
    for mode, row in ((m, summary[m]) for m in ("av", "video", "audio")):
        assert -1 <= row["ccc_valence"] <= 1 and -1 <= row["ccc_arousal"] <= 1
        assert row["n_clips"] >= 1
        metrics = json.loads((out / "runs" / mode / "eval" / "metrics.json").read_text())
        assert metrics["frames"]["ccc_mean"] == pytest.approx(row["ccc_mean"])
        assert (out / "runs" / mode / "best" / "model.safetensors").is_file()
    assert not list((out / "runs").rglob("*.png")) + list((out / "predict").glob("*.png")), "--no-plots draws nothing"
    predicted = list((out / "predict").glob("*_va.csv"))
    assert len(predicted) == 1 and len(predicted[0].read_text().splitlines()) == 33  # header + 32 frames
    # Rerunning reuses the data and the feature cache.
    assert main(["demo", "--out", str(out), "--clips", "16", "--frames", "32", "--epochs", "1",
                 "--workers", "1", "--no-plots"]) == 0
    assert "already there: kept" in capsys.readouterr().out
