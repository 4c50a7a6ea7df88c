"""A failed start leaves no half-made run folder behind."""

from attrnet.cli import main


def test_bad_data_root_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"data.root={tmp_path / 'missing'}", "--out", str(out)]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert not out.exists()
