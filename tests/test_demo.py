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


def test_the_data_section_shows_the_recorded_proxy_accuracies(tmp_path: Path):
    """The build writes "proxy_accuracies" (benchmarks/digits_av_proxies.py --record fills it):
    the data section shows them, or says how to record them."""
    from mmfurnace.demo import proxy_section

    recorded = {"proxy_accuracies": {"script": "benchmarks/digits_av_proxies.py", "test": {"image": 0.7}}}
    lines = proxy_section(recorded, tmp_path)
    assert any("Linear-probe accuracy per modality (how hard" in line for line in lines)
    assert '"image": 0.7' in "\n".join(lines)
    missing = proxy_section({"proxy_accuracies": None}, tmp_path)
    assert "not recorded" in missing[-1]
    assert f"--root {tmp_path} --record" in missing[-1]
