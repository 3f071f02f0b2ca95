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


def test_atomic_files_get_the_mode_open_would_give_them(tmp_path):
    import os

    from asr.fileio import atomic_write

    with atomic_write(tmp_path / "a.txt") as f:
        f.write("x")
    with open(tmp_path / "b.txt", "w") as f:  # what a plain open gives under this process's umask
        f.write("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 != 0o600
