"""The demo's serving smoke run: the default config, real files through tritonclient and
/v1/predict, a report naming the mode and runtime that served them."""

from __future__ import annotations

import io
import json

from rich.console import Console

from .conftest import WORDS, png_bytes, wav_bytes


def test_smoke_serves_with_the_default_config(export_dir, tmp_path) -> None:
    from mmfurnace.serve.smoke import serve_smoke

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "audio").mkdir()
    lines = []
    for i in range(4):
        (raw / "images" / f"{i}.png").write_bytes(png_bytes(i))
        (raw / "audio" / f"{i}.wav").write_bytes(wav_bytes(300 + 50 * i))
        lines.append(json.dumps({"id": f"t{i}", "split": "test", "image": f"images/{i}.png", "audio": f"audio/{i}.wav",
                                 "text": WORDS[i], "label": i}))
    # tuxpaint's manifest: labels by name, and a row without audio that the smoke run passes over
    lines.append(json.dumps({"id": "t9", "split": "test", "image": "images/0.png", "text": WORDS[0],
                             "label": WORDS[0]}))
    lines.insert(1, lines.pop())
    lines[2] = lines[2].replace('"label": 1}', f'"label": "{WORDS[1]}"}}')
    (raw / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (raw / "classes.json").write_text(json.dumps(WORDS))
    report = serve_smoke(export_dir, raw, n=4, console=Console(file=io.StringIO()))
    assert "default config (mode whole, runtime {'model': 'onnxruntime'})" in report
    rows = [line for line in report.splitlines() if line.startswith("| v2") or line.startswith("| /v1")]
    assert len(rows) == 6
    assert all(row.split(" | ")[3] in WORDS for row in rows)  # a predicted class name each
    assert [row.split(" | ")[2] for row in rows[:4]] == WORDS[:4]  # true labels, index or name
    assert "image+text" in report  # the request without audio was answered
