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
    (raw / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (raw / "classes.json").write_text(json.dumps(WORDS))
    report = serve_smoke(export_dir, raw, n=4, console=Console(file=io.StringIO()))
    assert "default config (mode whole, runtime {'model': 'onnxruntime'})" in report
    rows = [line for line in report.splitlines() if line.startswith("| v2") or line.startswith("| /v1")]
    assert len(rows) == 6
    assert all(row.split(" | ")[3] in WORDS for row in rows)  # a predicted class name each
    assert "image+text" in report  # the request without audio was answered
