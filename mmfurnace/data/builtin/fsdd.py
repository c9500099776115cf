"""The Free Spoken Digit Dataset (FSDD) as published: ``recordings/{digit}_{speaker}_{take}.wav``.

3,000 real 8 kHz mono recordings, 6 speakers, 50 takes per digit and speaker; the official
split puts takes 0-4 in test. Source: github.com/Jakobovski/free-spoken-digit-dataset,
CC BY-SA 4.0 -- attribute "Free Spoken Digit Dataset (Z. Jackson et al.)".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfurnace.data.audio import load_wav
from mmfurnace.data.builtin.staging import Skipped
from mmfurnace.errors import MissingDependencyError

SAMPLE_RATE = 8000  # FSDD's own rate; other rates in a user's copy are resampled to it
TEST_TAKES = range(5)  # the official test split
NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z][A-Za-z0-9-]*)_(?P<take>\d+)\.wav$")
FIX_HINT = (
    "point --fsdd at a copy of the Free Spoken Digit Dataset (the folder holding recordings/), "
    "e.g. `git clone https://github.com/Jakobovski/free-spoken-digit-dataset`; on the project's "
    "machines it is ../shared/data/fsdd"
)


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    take: int

    @property
    def stem(self) -> str:
        return self.path.stem


def recordings_folder(root: Path) -> Path:
    """``root/recordings`` (a clone of the repository) or ``root`` itself (the folder of WAVs)."""
    root = Path(root)
    for folder in (root / "recordings", root):
        if folder.is_dir() and any(folder.glob("*.wav")):
            return folder
    raise MissingDependencyError(f"FSDD recordings not found under {root}: {FIX_HINT}")


def find_recordings(root: Path, skipped: Skipped) -> list[Recording]:
    """Every ``{digit}_{speaker}_{take}.wav`` under :func:`recordings_folder`, sorted by name.

    WAV files whose name does not follow the pattern are skipped and counted.
    """
    found = []
    for path in sorted(recordings_folder(root).glob("*.wav")):
        match = NAME.match(path.name)
        if match is None:
            skipped.add("FSDD file name not {digit}_{speaker}_{take}.wav", path)
            continue
        found.append(Recording(path, int(match["digit"]), match["speaker"], int(match["take"])))
    return found


def read_speakers(root: Path) -> dict[str, dict[str, str]]:
    """Speaker metadata (gender, accent, language) from ``metadata.py`` when present.

    The file is a Python literal assignment; it is parsed with ``ast.literal_eval``, never
    executed. Missing or unreadable metadata gives ``{}`` (it is informational only).
    """
    path = Path(root) / "metadata.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "metadata" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def load_recording(recording: Recording) -> np.ndarray:
    """(samples,) float32 at :data:`SAMPLE_RATE`; InputError for a corrupt or silent file."""
    return load_wav(recording.path, target_rate=SAMPLE_RATE).numpy()
