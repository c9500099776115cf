"""mmfurnace.io: files and directories appear whole or not at all, and a crash never loses the
previous version."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmfurnace.io import atomic_dir, recover_dir, write_atomic, write_json_atomic


class Crash(Exception):
    pass


def test_write_json_atomic_round_trips_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json_atomic(path, {"b": 1, "a": "ünïcode", "p": tmp_path})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "ünïcode", "b": 1, "p": str(tmp_path)}
    assert list(path.parent.iterdir()) == [path]
    write_json_atomic(path, {"b": 1, "a": 2}, sort_keys=False)
    assert path.read_text().index('"b"') < path.read_text().index('"a"')


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")

    def half_then_crash(tmp):
        tmp.write_text("half of the new")
        raise Crash

    with pytest.raises(Crash):
        write_atomic(path, half_then_crash)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        (staging / "a").write_text("1")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "a").read_text() == "1"
    with pytest.raises(Crash):
        _write_then_crash(target)
    assert (target / "a").read_text() == "1"
    with atomic_dir(target, durable=False) as staging:  # no fsync per file, the same swap
        (staging / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _write_then_crash(target):
    with atomic_dir(target) as staging:
        (staging / "a").write_text("2")
        raise Crash


def test_the_copy_moved_aside_is_found_after_a_crash_between_the_renames(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        (staging / "a").write_text("1")
    target.rename(tmp_path / ".out.old")  # the instant after "move the old one aside"
    recovered = recover_dir(target)
    assert (recovered / "a").read_text() == "1"
    with atomic_dir(target) as staging:  # the next write succeeds and clears the debris
        (staging / "a").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from mmfurnace.io import atomic_dir\n"
        "with atomic_dir(Path(sys.argv[1])) as s:\n"
        "    (s / 'half').write_text('x')\n"
        "    os._exit(9)  # killed mid-write: no cleanup runs\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(target)], env={**os.environ}, check=False)
    assert proc.returncode == 9
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging-")]
    assert len(leftovers) == 1
    assert not target.exists()  # half a directory never appears at the target
    with atomic_dir(target) as staging:
        (staging / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
