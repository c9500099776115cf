"""The ablation runner: grid parsing/expansion, and a small grid trained end to end."""

from __future__ import annotations

import csv
import json
import shutil
import statistics

import pytest
import yaml

from mmfurnace.errors import ConfigError
from mmfurnace.train.ablation import (
    ConfigVariant,
    expand_grid,
    format_value,
    mean_std,
    parse_grid,
    run_ablation,
)
from tests.train.tinydata import tiny_datasets, tiny_run_config


def test_parse_grid_hand_cases():
    grid = parse_grid([
        "model.fusion=early,late",
        "train.alpha=0,0.1",
        "data.modalities=[image]|[audio,image,text]",
        "train.modality_dropout={audio: 0.1, text: 0.2},{}",
        "data.modalities_alt=[image],[audio, text]",
        "train.grad_checkpointing=true",
        "train.lr=1e-3,2.5E+2",
    ])
    assert grid == {
        "model.fusion": ["early", "late"],
        "train.alpha": [0, 0.1],
        "data.modalities": [["image"], ["audio", "image", "text"]],
        "train.modality_dropout": [{"audio": 0.1, "text": 0.2}, {}],
        "data.modalities_alt": [["image"], ["audio", "text"]],
        "train.grad_checkpointing": [True],
        "train.lr": [0.001, 250.0],
    }
    assert list(grid) == ["model.fusion", "train.alpha", "data.modalities", "train.modality_dropout",
                          "data.modalities_alt", "train.grad_checkpointing", "train.lr"]


@pytest.mark.parametrize(("specs", "match"), [
    (["model.fusion"], "key.path=value1,value2"),
    (["=early"], "key.path=value1,value2"),
    (["model.fusion=early,,late"], "empty value"),
    (["data.modalities=[image]|"], "empty value"),
    (["model.fusion=early", "model.fusion=late"], "given twice"),
    (["train.alpha=[0"], "not valid YAML"),
])
def test_parse_grid_errors(specs, match):
    with pytest.raises(ConfigError, match=match):
        parse_grid(specs)


def test_expand_grid_is_the_named_cartesian_product():
    variants = expand_grid({
        "model.fusion": ["early", "late"],
        "train.alpha": [0, 0.1],
        "data.modalities": [["image"], ["audio", "image", "text"]],
    })
    assert len(variants) == 8
    assert variants[0] == ConfigVariant(
        "fusion=early,alpha=0,modalities=image",
        ("model.fusion=early", "train.alpha=0", "data.modalities=[image]"),
    )
    assert variants[-1].name == "fusion=late,alpha=0.1,modalities=audio+image+text"
    assert variants[-1].overrides == ("model.fusion=late", "train.alpha=0.1",
                                      "data.modalities=[audio, image, text]")
    assert len({v.name for v in variants}) == 8
    assert expand_grid({}) == [ConfigVariant("base")]


def test_expand_grid_names_clashing_keys_in_full():
    variants = expand_grid({"model.encoders.image.dim": [8], "model.encoders.audio.dim": [16]})
    assert variants[0].name == "model.encoders.image.dim=8,model.encoders.audio.dim=16"


def test_expand_grid_rejects_bad_values():
    with pytest.raises(ConfigError, match="non-empty list"):
        expand_grid({"model.fusion": []})
    with pytest.raises(ConfigError, match="non-empty list"):
        expand_grid({"model.fusion": "early"})
    with pytest.raises(ConfigError, match="variant name"):
        ConfigVariant("a/b", ())


@pytest.mark.parametrize("value", ["early", "0.1", "a, b", "true", "", 0, 0.1, 1e-5, 2e20, float("inf"), True, None,
                                   ["audio", "image"], {"audio": 0.1}, [[1, 2], "x:y"]])
def test_format_value_round_trips_through_yaml(value):
    assert yaml.safe_load(format_value(value)) == value


def test_mean_std():
    assert mean_std([]) == (None, None)
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(statistics.stdev([0.2, 0.4, 0.9]))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    base = tiny_run_config(out / "unused", epochs=1, batch_size=24)
    variants = expand_grid({"model.fusion": ["late", "early"]})
    variants += [
        ConfigVariant("typo", ("model.fusoin=late",)),  # invalid config: never trained
        # valid config that the recipe rejects at train time: dropout for a modality not used
        ConfigVariant("image-only-bad-dropout", ("data.modalities=[image]", "train.modality_dropout={audio: 0.5}")),
    ]
    result = run_ablation(base, variants, seeds=[0, 1], out_dir=out, progress=False, datasets=tiny_datasets())
    return out, result


@pytest.mark.slow
def test_ablation_aggregates_seeds_from_results_json(ablation):
    out, result = ablation
    assert [v.name for v in result.variants] == ["fusion=late", "fusion=early", "typo", "image-only-bad-dropout"]
    rows = {r["variant"]: r for r in csv.DictReader((out / "results.csv").open())}
    md = (out / "results.md").read_text()
    for name, fusion in (("fusion=late", "late"), ("fusion=early", "early")):
        per_seed = [json.loads((out / "runs" / name / f"seed{k}" / "results.json").read_text()) for k in (0, 1)]
        accs = [r["test"]["accuracy"] for r in per_seed]
        f1s = [r["test"]["macro_f1"] for r in per_seed]
        summary = result.summary(name)
        assert summary.status == "ok"
        assert summary.seeds_ok == [0, 1]
        assert summary.fusion == fusion
        assert summary.accuracy_mean == pytest.approx(statistics.mean(accs))
        assert summary.accuracy_std == pytest.approx(statistics.stdev(accs))
        assert summary.macro_f1_mean == pytest.approx(statistics.mean(f1s))
        assert summary.params == per_seed[0]["params"]
        assert summary.train_time_s == pytest.approx(statistics.mean(r["train_time_s"] for r in per_seed))
        assert float(rows[name]["accuracy_mean"]) == pytest.approx(statistics.mean(accs))
        assert float(rows[name]["accuracy_std"]) == pytest.approx(statistics.stdev(accs))
        line = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:6] == ["audio, image, text", fusion, "scratch", "1",
                              f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}"]
        assert cells[7] == str(per_seed[0]["params"])
        assert cells[8] == str(per_seed[0]["trainable_params"]) == cells[7]  # nothing frozen
        assert cells[10] == "2/2"


@pytest.mark.slow
def test_ablation_records_failed_variants_and_goes_on(ablation):
    out, result = ablation
    typo = result.summary("typo")
    assert typo.status == "failed"
    assert "fusoin" in typo.error
    assert typo.accuracy_mean is None
    assert not (out / "runs" / "typo").exists()  # an invalid config is never trained
    bad = result.summary("image-only-bad-dropout")
    assert bad.status == "failed"
    assert "modality_dropout" in bad.error
    assert (out / "runs" / "image-only-bad-dropout" / "seed0" / "error.txt").is_file()
    statuses = {(r.variant, r.seed): r.status for r in result.runs}
    assert statuses[("fusion=early", 1)] == "ok"  # variants after a failure still ran
    md = (out / "results.md").read_text()
    assert "| typo | ? | ? | ? | ? | **failed** |" in md
    assert "## Failed runs" in md
    rows = {r["variant"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["typo"]["status"] == "failed"
    assert "fusoin" in rows["typo"]["error"]


@pytest.mark.slow
def test_ablation_writes_plots_and_reuses_finished_runs(ablation, tmp_path):
    out, result = ablation
    for key in ("bar", "curves"):
        assert result.files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.files["bar"].name == "accuracy.png"
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["runs"]) == 8
    # run again (on a copy) with resume: finished runs are read back, not retrained or refused
    shutil.copytree(out / "runs" / "fusion=late", tmp_path / "runs" / "fusion=late")
    base = tiny_run_config(out / "unused", epochs=1, batch_size=24)
    late = expand_grid({"model.fusion": ["late"]})
    again = run_ablation(base, late, seeds=[0, 1], out_dir=tmp_path, progress=False,
                         datasets=tiny_datasets(), resume=True)
    assert [r.status for r in again.runs] == ["reused", "reused"]
    assert again.summary("fusion=late").accuracy_mean == result.summary("fusion=late").accuracy_mean
    # a changed config never overwrites or silently reuses a finished run
    saved = (tmp_path / "runs" / "fusion=late" / "seed0" / "results.json").read_text()
    changed = tiny_run_config(out / "unused", epochs=2, batch_size=24)
    stale = run_ablation(changed, late, seeds=[0], out_dir=tmp_path, progress=False,
                         datasets=tiny_datasets(), resume=True)
    assert stale.runs[0].status == "failed"
    assert "different config" in stale.runs[0].error
    assert (tmp_path / "runs" / "fusion=late" / "seed0" / "results.json").read_text() == saved
    # without resume the recipe refuses to overwrite the run
    refused = run_ablation(base, late, seeds=[0], out_dir=tmp_path, progress=False, datasets=tiny_datasets())
    assert refused.runs[0].status == "failed"
    assert "already holds a run" in refused.runs[0].error


def test_modality_subset_restricts_injected_datasets(tmp_path):
    from mmfurnace.data.subset import restrict_modalities

    splits = restrict_modalities(tiny_datasets(6, 3, 3), ["image"])
    assert splits["train"].info.modalities == ("image",)
    assert all(set(splits["train"][i].inputs) <= {"image"} for i in range(6))
    with pytest.raises(ConfigError, match="has only"):
        restrict_modalities(tiny_datasets(6, 3, 3), [])


def test_bad_arguments_and_yaml_base_fail_before_training(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  fusion: late\ntrain:\n  epochs: 1\n")
    result = run_ablation(base, [ConfigVariant("typo", ("train.epocs=2",))], seeds=[0], out_dir=tmp_path / "out",
                          progress=False, datasets=tiny_datasets(6, 3, 3))
    assert result.variants[0].status == "failed"
    assert "base.yaml + variant typo" in result.variants[0].error
    assert "epocs: unknown key" in result.variants[0].error
    with pytest.raises(ConfigError, match="distinct"):
        run_ablation(base, [ConfigVariant("a")], seeds=[0, 0], out_dir=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="distinct names"):
        run_ablation(base, [ConfigVariant("a"), ConfigVariant("a")], seeds=[0], out_dir=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="unknown ablation metric 'acc'"):
        run_ablation(base, [ConfigVariant("a")], seeds=[0], out_dir=tmp_path / "x", progress=False, metric="acc")
