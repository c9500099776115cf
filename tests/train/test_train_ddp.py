"""The same recipe under torchrun: 2 CPU processes with gloo end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmfurnace.train.checkpoint import load_checkpoint
from mmfurnace.train.logging import read_records

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os
from pathlib import Path
import torch
from tests.train.tinydata import tiny_datasets, tiny_run_config
from mmfurnace.train.recipe import train

out = Path({out!r})
cfg = tiny_run_config(out / "run", epochs=2, batch_size=4, modality_dropout={{"audio": 0.3}},
                      feature_cache_dir=out / "features")
for modality in {frozen!r}:  # frozen encoders: rank 0 builds the feature cache, rank 1 reads it
    cfg.model.encoders[modality].freeze = True
result = train(cfg, progress=False, datasets=tiny_datasets(train=32, valid=8, test=8))
rank = int(os.environ["RANK"])
torch.save(result.model.state_dict(), out / f"rank{{rank}}.pt")
(out / f"rank{{rank}}.json").write_text(str(len(result.history)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [(), ("image", "text")], ids=["trainable", "feature-cache"])
def test_torchrun_two_cpu_ranks_end_identical(tmp_path, frozen):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(out=str(tmp_path), frozen=list(frozen))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # every rank ran both epochs and took rank 0's validation decisions
    assert (tmp_path / "rank0.json").read_text() == (tmp_path / "rank1.json").read_text() == "2"
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], atol=0, rtol=0, msg=key)
    last = load_checkpoint(tmp_path / "run" / "last")
    for key, tensor in last.weights.items():
        torch.testing.assert_close(tensor, rank0[key], atol=0, rtol=0, msg=key)

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["world_size"] == 2
    # each rank saw half of the 32 samples in batches of 4: 4 steps an epoch, not 8
    assert results["steps"] == 8
    assert last.step == 8
    assert results["test"]["samples"] == 8
    # rank 0 alone logged: each epoch once
    assert [r["epoch"] for r in read_records(tmp_path / "run" / "metrics.jsonl", "epoch")] == [1, 2]
    start = read_records(tmp_path / "run" / "metrics.jsonl", "start")[0]
    assert sorted(start["feature_cache"]) == sorted(frozen)
