"""pgpo.paths: one cache root, named subfolders, atomic writes that never delete a folder pgpo did not create."""

import pytest

from pgpo import paths


def test_cache_root_and_named_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("PGPO_CACHE", raising=False)
    assert paths.cache_root() == paths.Path("~/.cache/pgpo").expanduser()
    monkeypatch.setenv("PGPO_CACHE", str(tmp_path))
    assert paths.cache_root() == tmp_path
    assert paths.smollm2_dir() == tmp_path / "smollm2-135m-instruct"
    assert paths.warmstart_dir("abc") == tmp_path / "warmstart-abc"
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            paths.cache_dir(bad)


def test_atomic_folder_writes_marks_and_replaces_only_its_own(tmp_path):
    target = tmp_path / "thing"
    with paths.atomic_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1" and paths.created_by_pgpo(target)
    with paths.atomic_folder(target) as tmp:  # pgpo's own folder: replaced
        (tmp / "b.txt").write_text("2")
    assert not (target / "a.txt").exists() and (target / "b.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no temp folders left behind


def test_atomic_folder_never_deletes_a_foreign_folder(tmp_path):
    foreign = tmp_path / "thing"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not created by pgpo"):
        with paths.atomic_folder(foreign) as tmp:
            (tmp / "model.bin").write_text("x")
    assert (foreign / "precious.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_atomic_folder_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with paths.atomic_folder(tmp_path / "thing") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_keeps_a_complete_one_written_meanwhile(tmp_path):
    target = tmp_path / "thing"
    with paths.atomic_folder(target, is_complete=lambda p: (p / "done").exists()) as tmp:
        target.mkdir()  # another process finished first (without pgpo's marker, e.g. an older pgpo)
        (target / "done").write_text("theirs")
        (tmp / "done").write_text("ours")
    assert (target / "done").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_check_cache_writable_creates_the_root_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PGPO_CACHE", str(tmp_path / "a" / "cache"))
    assert paths.check_cache_writable() == tmp_path / "a" / "cache"
    assert list((tmp_path / "a" / "cache").iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("PGPO_CACHE", str(tmp_path / "file" / "cache"))  # below a file
    with pytest.raises(NotADirectoryError, match=r"the pgpo cache .*file/cache is not writable \(Not a directory\)"):
        paths.check_cache_writable()
