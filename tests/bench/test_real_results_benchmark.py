"""benchmarks/real_results.py: the rows and checks of one table, run end to end on tiny data
with frozen tiny encoders (the real run needs the pretrained wheels, ../shared/data and
minutes of CPU), and a clear error when fsdd-mnist's shared data is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark
from tests.train.tinydata import tiny_datasets, tiny_run_config


@pytest.fixture(autouse=True)
def _restored_rng():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def _frozen_tiny_config(tmp_path: Path):
    """A one-epoch late-fusion run config on tiny encoders, all frozen (the probe's need)."""
    cfg = tiny_run_config(tmp_path / "unused", fusion="late", epochs=1,
                          feature_cache_dir=tmp_path / "cache")
    for encoder in cfg.model.encoders.values():
        encoder.freeze = True
    return cfg


def test_table_has_unimodal_fusion_and_probe_rows_and_its_checks(tmp_path: Path) -> None:
    bench = load_benchmark("real_results")
    cfg = _frozen_tiny_config(tmp_path)
    table = bench.run_table(cfg, [0], tmp_path / "out", datasets=tiny_datasets(24, 12, 12))
    names = [r["name"] for r in table["rows"]]
    assert names == ["unimodal-audio", "unimodal-image", "unimodal-text", "early", "late",
                     "cross_attention", "low_rank_tensor", "probe-audio", "probe-image",
                     "probe-text", "probe-concat"]
    for row in table["rows"]:
        assert 0.0 <= row["accuracy_mean"] <= 1.0, row
        assert row["seeds"] == [0]
    assert table["rows"][0]["modalities"] == ["audio"]
    assert table["rows"][-1]["modalities"] == ["audio", "image", "text"]
    # the runs and probes share entries: tiny encoders are randomly initialised, so a unimodal
    # model's image and text encoders (each built alone) get other weights than the fused
    # models' (audio, built first, matches); all fusions and seeds and the probes add none
    assert set(table["feature_cache"]) == {"audio", "image", "text"}
    assert len(list((tmp_path / "cache").iterdir())) == 5
    assert set(table["checks"]) >= {"every_fusion_beats_best_unimodal", "best_fusion_beats_probe_concat"}
    # the best fusion against the concatenated probe row by row, from its saved predictions
    gap = table["best_fusion_vs_probe"]
    best = max((r for r in table["rows"] if r["kind"] == "fusion"), key=lambda r: r["accuracy_mean"])
    concat = table["rows"][-1]
    assert gap["fusion"] == best["name"]
    assert gap["rows"] == 12
    assert gap["delta"] == pytest.approx(best["accuracy_mean"] - concat["accuracy_mean"])
    assert gap["low"] <= gap["delta"] <= gap["high"]
    assert gap["only_a"] - gap["only_b"] == pytest.approx(12 * gap["delta"])
    report = {"dataset": "tiny", "config": "tiny.yaml", "seeds": [0], "command": "python x",
              "credit": "none", "tables": {"test split": table},
              "machine": {"cpu": {"model": "cpu", "usable_cores": 2, "isa": {"avx2": True}},
                          "versions": {"torch": "2"}, "load_average": [1.0, 1.0, 1.0]}}
    text = bench.markdown(report)
    assert "| probe-concat (L2 " in text
    assert f"{best['name']} − probe on the same 12 test rows" in text
    assert "ISA avx2" in text


def test_checks_compare_fusions_with_the_best_unimodal_row_and_the_concat_probe() -> None:
    bench = load_benchmark("real_results")

    def row(name: str, kind: str, acc: float) -> dict:
        return {"name": name, "kind": kind, "accuracy_mean": acc}

    rows = [row("unimodal-audio", "unimodal", 0.6), row("unimodal-image", "unimodal", 0.7),
            row("early", "fusion", 0.8), row("late", "fusion", 0.69),
            row("probe-concat", "probe", 0.85)]
    c = bench.checks(rows)
    assert c["best_unimodal"] == 0.7
    assert c["fusions_below_best_unimodal"] == ["late"]
    assert c["every_fusion_beats_best_unimodal"] is False
    assert c["best_fusion_beats_probe_concat"] is False
    rows[3]["accuracy_mean"], rows[4]["accuracy_mean"] = 0.75, 0.79
    c = bench.checks(rows)
    assert c["every_fusion_beats_best_unimodal"] is True
    assert c["best_fusion_beats_probe_concat"] is True


def test_missing_fsdd_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("real_results")
    with pytest.raises(SystemExit, match="fsdd.*Free Spoken Digit Dataset.*--fsdd"):
        bench.main(["--dataset", "fsdd-mnist", "--fsdd", str(tmp_path / "nowhere")])


def test_resplits_run_the_fusion_and_the_probe_per_split_and_read_finished_splits_back(
    tmp_path: Path,
) -> None:
    import contextlib

    bench = load_benchmark("real_results")
    cfg = _frozen_tiny_config(tmp_path)
    opened, closed = [], []

    @contextlib.contextmanager
    def split_data(k: int):
        opened.append(k)
        try:  # another split: other rows in each part
            yield cfg, tiny_datasets(20 + 4 * k, 12, 8 + 4 * k)
        finally:
            closed.append(k)

    out = tmp_path / "resplits"
    result = bench.resplit_rows("late", [0], [1, 2], out, split_data)
    assert (opened, closed) == ([1, 2], [1, 2])
    assert [r["split"] for r in result["splits"]] == [1, 2]
    assert [r["rows"]["test"] for r in result["splits"]] == [12, 16]
    gaps = [r["fusion_test"] - r["probe_test"] for r in result["splits"]]
    assert result["gap"]["mean"] == pytest.approx(sum(gaps) / 2)
    assert result["gap"]["splits"] == 2
    assert result["gap"]["wins"] + result["gap"]["losses"] + result["gap"]["ties"] == 2
    for r in result["splits"]:
        assert 0.0 <= r["fusion_test"] <= 1.0
        assert 0.0 <= r["probe_test"] <= 1.0
        assert (out / f"split{r['split']}" / "runs" / "late" / "seed0").is_dir()
        # the per-row record agrees with the accuracies
        assert [len(c) for c in r["fusion_correct"]] == [r["rows"]["test"]]
        assert sum(r["fusion_correct"][0]) / r["rows"]["test"] == pytest.approx(r["fusion_test"])
        assert sum(r["probe_correct"]) / r["rows"]["test"] == pytest.approx(r["probe_test"])
    assert "pooled" not in result  # other splits share rows: no pooled row-by-row gap
    # finished splits are read back from their summaries: no data opened again
    again = bench.resplit_rows("late", [0], [1, 2], out, split_data)
    assert opened == [1, 2]
    assert again["splits"] == result["splits"]
    # a summary written before folds existed named its split "split_seed"
    old = out / "split2" / "summary.json"
    row = json.loads(old.read_text())
    row["split_seed"] = row.pop("split")
    old.write_text(json.dumps(row))
    assert bench.resplit_rows("late", [0], [1, 2], out, split_data)["splits"][1]["split"] == 2
    text = bench._resplit_lines(result)
    assert "## late vs probe-concat on 2 other grouped splits" in text
    assert any(line.startswith("- late − probe over splits: mean ") for line in text)


def test_folds_pool_every_test_row_into_one_row_by_row_gap(tmp_path: Path) -> None:
    import contextlib

    bench = load_benchmark("real_results")
    cfg = _frozen_tiny_config(tmp_path)

    @contextlib.contextmanager
    def split_data(k: int):
        yield cfg, tiny_datasets(24, 8, 8 + 4 * k)

    result = bench.resplit_rows("late", [0, 1], [0, 1, 2], tmp_path / "cv3", split_data,
                                folds=True)
    assert result["kind"] == "folds"
    pooled = result["pooled"]
    assert pooled["rows"] == 8 + 12 + 16
    right = [(sum(map(sum, r["fusion_correct"])) / 2, sum(r["probe_correct"]))
             for r in result["splits"]]
    assert pooled["delta"] == pytest.approx(sum(a - b for a, b in right) / 36)
    assert pooled["low"] <= pooled["delta"] <= pooled["high"]
    text = bench._resplit_lines(result)
    assert "## late vs probe-concat by 3-fold cross-validation" in text
    assert "| fold | train / valid / test rows |" in "\n".join(text)
    assert any(line.startswith("- late − probe on the same 36 test rows of all folds: ")
               for line in text)


def test_groups_of_test_rows_follow_the_test_split_order_of_the_build(tmp_path: Path) -> None:
    from mmfurnace.errors import MMFurnaceError

    bench = load_benchmark("real_results")
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [("0", "train", "b", "b/x"), ("1", "test", "b", "b/y"), ("2", "test", "a", "a/z"),
            ("3", "valid", "a", "a/z2"), ("4", "test", "b", "b/y")]
    (raw / "manifest.jsonl").write_text("".join(
        json.dumps({"id": i, "split": s, "text": "a stamp", "label": c}) + "\n" for i, s, c, _ in rows))
    (raw / "provenance.jsonl").write_text("".join(
        json.dumps({"id": i, "group": g}) + "\n" for i, _, _, g in rows))
    (raw / "classes.json").write_text(json.dumps(["a", "b"]))
    assert bench.groups_of_test_rows(tmp_path, torch.tensor([1, 0, 1])) == ["b/y", "a/z", "b/y"]
    with pytest.raises(MMFurnaceError, match="not the test split.s rows"):
        bench.groups_of_test_rows(tmp_path, torch.tensor([0, 0, 1]))
    assert bench.groups_of_test_rows(tmp_path / "elsewhere", torch.tensor([1])) is None


@pytest.mark.parametrize("flag", [["--split-seeds", "1,2"], ["--cv-folds", "5"]])
def test_split_seeds_and_folds_are_refused_for_fsdd_mnist_whose_test_split_is_fixed(
    flag: list[str],
) -> None:
    bench = load_benchmark("real_results")
    with pytest.raises(SystemExit, match=f"{flag[0]}.*fixed.*only tuxpaint"):
        bench.main(["--dataset", "fsdd-mnist", *flag])


def test_too_few_folds_are_refused() -> None:
    bench = load_benchmark("real_results")
    with pytest.raises(SystemExit, match="--cv-folds must be 3 to 20"):
        bench.main(["--dataset", "tuxpaint", "--cv-folds", "2"])
