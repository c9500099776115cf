"""Build a dataset's ``raw/`` folder so that it appears whole or not at all.

Every built-in builder writes into a hidden temporary folder beside the target and swaps it
into place with :func:`mmfurnace.data.cache.swap_into_place` at the end: an interrupted or
failed build leaves the previous ``raw/`` (if any) untouched and no half-written one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mmfurnace.data.cache import swap_into_place
from mmfurnace.errors import InputError

MAX_EXAMPLES = 5  # paths kept per skip reason in build.json (the count is always complete)


@contextmanager
def staged_folder(final: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success swap it into place.

    An existing ``final`` is an error unless ``overwrite``; it is replaced only once the new
    folder is complete. On any exception the temporary folder is deleted.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise InputError(f"{final} already exists; delete it or rebuild with force/overwrite")
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.raw-building-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        yield tmp
        swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first: leave no empty folders of ours behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


@dataclass
class Skipped:
    """Source files a build left out, by reason: counted, with a few example paths."""

    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: Path | str, detail: str = "") -> None:
        self.reasons.setdefault(reason, []).append(f"{path}: {detail}" if detail else str(path))

    def count(self, reason: str) -> int:
        return len(self.reasons.get(reason, []))

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {
            reason: {"count": len(paths), "examples": paths[:MAX_EXAMPLES]}
            for reason, paths in sorted(self.reasons.items())
        }


def write_json(path: Path, obj: object) -> None:
    """``obj`` as indented UTF-8 JSON (inside a staged folder, which is what makes it atomic)."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    """One JSON object per line, UTF-8."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_raw(
    out_dir: Path, build: Callable[[Path], dict[str, object]], *, overwrite: bool
) -> Path:
    """Run ``build(folder)`` in a :func:`staged_folder` for ``out_dir/raw``; the record it
    returns, plus ``build_seconds``, becomes ``build.json``. Returns the manifest's path."""
    started = time.perf_counter()
    final = Path(out_dir) / "raw"
    with staged_folder(final, overwrite=overwrite) as tmp:
        record = build(tmp)
        record["build_seconds"] = round(time.perf_counter() - started, 2)
        write_json(tmp / "build.json", record)
    return final / "manifest.jsonl"
