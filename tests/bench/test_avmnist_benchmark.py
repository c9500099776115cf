"""benchmarks/avmnist_vs_multibench.py end to end on tiny files, with a stand-in MultiBench.

The stand-in is a few files with MultiBench's module layout and call signatures (its example
script, get_dataloader, train/test, LeNet/MLP/Concat) and trivial bodies, so the runner's
patching (data path, workers, .cuda(), epochs, torch.load, the torchvision stub) is exercised
without MultiBench's code. Never asserts on speed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark
from tests.data.test_avmnist_write import pack

FAKE = {
    "examples/multimedia/avmnist_simple_late_fusion.py": """
        import sys
        import os
        sys.path.append(os.getcwd())
        from unimodals.common_models import LeNet, MLP
        import torch
        from datasets.avmnist.get_data import get_dataloader
        from fusions.common_fusions import Concat
        from training_structures.Supervised_Learning import train, test

        traindata, validdata, testdata = get_dataloader('/home/paul/yiwei/avmnist/_MFAS/avmnist')
        channels = 6
        encoders = [LeNet(1, channels, 3).cuda(), LeNet(1, channels, 5).cuda()]
        head = MLP(channels*40, 100, 10).cuda()
        fusion = Concat().cuda()
        train(encoders, fusion, head, traindata, validdata, 30,
              optimtype=torch.optim.SGD, lr=0.1, weight_decay=0.0001)
        model = torch.load('best.pt').cuda()
        test(model, testdata, no_robust=True)
    """,
    "datasets/avmnist/get_data.py": """
        import numpy as np
        from torch.utils.data import DataLoader

        def get_dataloader(data_dir, batch_size=40, num_workers=8):
            assert num_workers == 0, num_workers
            def part(name):
                image = np.load(data_dir + f"/image/{name}_data.npy").reshape(-1, 1, 28, 28) / 255.0
                audio = np.load(data_dir + f"/audio/{name}_data.npy")[:, None] / 255.0
                labels = np.load(data_dir + f"/{name}_labels.npy")
                return [[image[i], audio[i], labels[i]] for i in range(len(labels))]
            train, test = part("train"), part("test")
            cut = len(train) - 3
            return (DataLoader(train[:cut], batch_size=batch_size, shuffle=True),
                    DataLoader(train[cut:], batch_size=batch_size),
                    DataLoader(test, batch_size=batch_size))
    """,
    "unimodals/common_models.py": """
        import torch
        import torchvision  # as MultiBench's does; the runner stubs it if it cannot import
        from torch import nn

        class LeNet(nn.Module):
            def __init__(self, in_channels, args_channels, additional_layers):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, args_channels * 2 ** additional_layers, 3)
            def forward(self, x):
                return self.conv(x).mean((2, 3))

        class MLP(nn.Module):
            def __init__(self, indim, hiddim, outdim):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(indim, hiddim), nn.ReLU(), nn.Linear(hiddim, outdim))
            def forward(self, x):
                return self.net(x)
    """,
    "fusions/common_fusions.py": """
        import torch
        from torch import nn

        class Concat(nn.Module):
            def forward(self, modalities):
                return torch.cat([m.flatten(1) for m in modalities], dim=1)
    """,
    "training_structures/Supervised_Learning.py": """
        import torch
        from torch import nn

        class MMDL(nn.Module):
            def __init__(self, encoders, fusion, head, has_padding=False):
                super().__init__()
                self.encoders, self.fuse, self.head = nn.ModuleList(encoders), fusion, head
            def forward(self, inputs):
                return self.head(self.fuse([e(x) for e, x in zip(self.encoders, inputs)]))

        def train(encoders, fusion, head, train_dataloader, valid_dataloader, total_epochs,
                  optimtype=torch.optim.RMSprop, lr=0.001, weight_decay=0.0):
            model = MMDL(encoders, fusion, head)
            op = optimtype(model.parameters(), lr=lr, weight_decay=weight_decay)
            for epoch in range(total_epochs):
                model.train()
                for j in train_dataloader:
                    op.zero_grad()
                    out = model([i.float() for i in j[:-1]])
                    nn.functional.cross_entropy(out, j[-1].long()).backward()
                    op.step()
                model.eval()
                with torch.no_grad():
                    for j in valid_dataloader:
                        model([i.float() for i in j[:-1]])
                torch.save(model, "best.pt")

        def single_test(model, test_dataloader, *args, **kwargs):
            right = total = 0
            with torch.no_grad():
                for j in test_dataloader:
                    right += int((model([i.float() for i in j[:-1]]).argmax(1) == j[-1]).sum())
                    total += len(j[-1])
            return {"Accuracy": right / total}

        def test(model, test_dataloaders_all, no_robust=False, **kwargs):
            single_test(model, test_dataloaders_all)
    """,
}


def fake_multibench(root: Path) -> Path:
    for rel, text in FAKE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.mark.slow
def test_benchmark_tables_both_systems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack(tmp_path / "packed")
    bench = load_benchmark("avmnist_vs_multibench")
    out_json = tmp_path / "result.json"
    argv = ["--packed", str(tmp_path / "packed"), "--rows", "unique", "--epochs", "1,2",
            "--variants", "default-early", "--out", str(tmp_path / "out"), "--json", str(out_json)]
    assert bench.main(argv) == 0
    result = json.loads(out_json.read_text())
    assert "MultiBench: skipped (no --multibench" in result["note"]
    rows = result["rows"]
    assert [(r["system"], r["variant"], r["epochs"]) for r in rows] == [
        ("mmfurnace", "default-early", 1), ("mmfurnace", "default-early", 2)]
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1
        assert set(r) >= {"image_alone", "audio_alone", "samples_per_s", "peak_anon_mib", "params"}
        assert r["peak_anon_mib"] > 0
        assert r["audio_alone"] is not None
    assert result["machine"]["cpu"]["isa"] is not None
    layout = json.loads((tmp_path / "out" / "avmnist-unique" / "layout.json").read_text())
    assert layout["valid_start"] == 7
    assert "| mmfurnace | default-early | 2 |" in capsys.readouterr().out

    # --rows multibench + a (stand-in) MultiBench checkout: its runner in a subprocess
    mb = fake_multibench(tmp_path / "MultiBench")
    argv = ["--packed", str(tmp_path / "packed"), "--rows", "30,6,8", "--epochs", "1,2",
            "--variants", "", "--multibench", str(mb), "--multibench-python", sys.executable,
            "--out", str(tmp_path / "mb"), "--json", str(out_json), "--speed-rounds", "1",
            "--speed-steps", "2", "--speed-variants", "mbsize-early"]
    assert bench.main(argv) == 0
    result = json.loads(out_json.read_text())
    rows = result["rows"]
    assert [(r["system"], r["epochs"]) for r in rows] == [("MultiBench", 1), ("MultiBench", 2)]
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1
        assert 0 <= r["audio_alone"] <= 1
        assert r["samples_per_s"] > 0
    mb_raw = result["raw"]["multibench"]
    assert mb_raw["example_epochs"] == 30  # the example's own count, replaced by --epochs
    assert len(mb_raw["epochs"]) == 2
    assert mb_raw["epochs"][0]["train_rows"] == 33  # 30 + 6 rows in the train files, 3 kept for valid
    assert "best_test" in mb_raw
    speed = result["raw"]["speed"]
    assert set(speed) == {"multibench", "mbsize-early"}
    assert all(r["samples_per_s"] > 0 for runs in speed.values() for r in runs)
    assert "x MultiBench" in capsys.readouterr().out


def test_tree_memory_counts_pages_shared_with_a_forked_child_once() -> None:
    """A forked child shares its parent's pages copy-on-write; summing RssAnon over the tree
    counted them twice (MultiBench's memory_profiler forks after loading its arrays)."""
    import os
    import signal

    bench = load_benchmark("avmnist_vs_multibench")
    block = bytearray(b"\x01") * (64 << 20)  # written, so its pages are resident
    before = bench._tree_anon_kib(os.getpid())
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        os.write(write, b"x")
        signal.pause()
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        after = bench._tree_anon_kib(os.getpid())
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read)
    assert before >= 64 << 10
    assert after - before < 16 << 10, (before, after)
    del block
