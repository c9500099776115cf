"""The demo end to end on a tiny built-in dataset: every step runs and links its report."""

import shutil
from pathlib import Path

import pytest

from mmfurnace.demo import DemoSettings, run_demo

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_quick_demo_writes_every_section(tmp_path: Path):
    settings = DemoSettings.quick_settings(tmp_path)
    index = run_demo(settings)
    text = index.read_text()
    for section in settings.sections.values():
        assert section.is_file()
        assert section.name in text
    assert set(settings.sections) == {"data", "fusion", "robustness", "compression", "engines", "serving", "profile"}
    fusion_table = (settings.report / "fusion" / "results.md").read_text()
    assert "failed" not in fusion_table
    for variant in ("unimodal-image", "early", "late", "cross_attention", "low_rank_tensor"):
        assert variant in fusion_table
    compression = (settings.report / "compression" / "compression.md").read_text()
    assert "gate (budget)" in compression  # each variant's verdict against its accuracy budget
    assert "PASS" in compression or "FAILED" in compression
