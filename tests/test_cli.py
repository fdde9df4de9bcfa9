"""The `avfusion` command: help, listing, and user errors reported without a traceback."""
import pytest

from avfusion.cli.main import main


def test_help_and_models(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert all(cmd in printed for cmd in ("demo", "predict", "train", "evaluate", "cache", "download"))
    assert main(["models"]) == 0
    assert "tiny" in capsys.readouterr().out.split()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    # One bad video in a batch: reported in one line, the batch ends "0 written, 1 failed", exit 1.
    assert main(["predict", str(empty), "--model", "tiny", "--face-backend", "full", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "0 written, 1 failed" in captured.out
    assert "empty.mp4" in err and "empty file" in err and "Traceback" not in err
    assert main(["predict", str(empty), "--model", str(tmp_path / "no_model")]) == 2
    assert "unknown model" in capsys.readouterr().err
