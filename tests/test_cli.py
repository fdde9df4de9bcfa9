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
    assert main(["predict", str(empty), "--model", "tiny", "--face-backend", "full"]) == 2
    err = capsys.readouterr().err
    assert "empty.mp4" in err and "empty file" in err and "Traceback" not in err
    assert main(["predict", str(empty), "--model", str(tmp_path / "no_model")]) == 2
    assert "unknown model" in capsys.readouterr().err
