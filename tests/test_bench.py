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
