import pytest

from asr.fileio import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "report.txt"
    with atomic_write(path) as f:
        f.write("first")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half of the second")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]
