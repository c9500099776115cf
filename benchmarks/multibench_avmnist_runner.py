"""Run MultiBench's own AV-MNIST example on CPU, on files in its AV-MNIST layout; print JSON.

    MB_PYTHON benchmarks/multibench_avmnist_runner.py --multibench PATH --data DIR \
        [--epochs 1] [--workers 0] [--threads 1] [--seed 0] [--json OUT]

Called by ``benchmarks/avmnist_vs_multibench.py`` as a subprocess, under the Python of the
environment MultiBench's dependencies are installed in (it imports nothing from mmfurnace,
and no MultiBench code is copied here: ``PATH`` is a checkout of pliang279/MultiBench).

It executes ``examples/multimedia/avmnist_simple_late_fusion.py`` unchanged (LeNet(1, 6, 3)
image and LeNet(1, 6, 5) audio encoders, Concat, MLP(240, 100, 10) head, MultiBench's
``train`` with SGD lr 0.1, weight decay 1e-4, batch 40, best epoch by valid accuracy saved
to best.pt, then ``test``) with only what a CPU machine and these files need patched in:

- ``get_dataloader``'s hard-coded data path -> ``--data``; ``num_workers`` -> ``--workers``
  (its default 8 processes on a 2-core machine measure the scheduler, not the model);
- ``Module.cuda()`` -> a no-op (the example calls it; the machine has no GPU);
- the example's 30 epochs -> ``--epochs``;
- ``torch.load("best.pt")`` -> ``weights_only=False`` (MultiBench pickles the whole model,
  which torch >= 2.6 refuses by default);
- torchvision, imported by MultiBench's common_models but not used by LeNet/MLP, is replaced
  by an empty module when it does not import (its PyPI wheels need a matching torch build).

Measured around it: training samples/s (time spent inside the train loader's iteration,
i.e. loading + forward + backward + step, without validation), the test accuracy of every
epoch's model (full, image zeroed, audio zeroed: MultiBench has no modality mask, so
"absent" is a zero input as its robustness scripts use) and of best.pt as the example
reports it. Peak memory is measured by the caller from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import runpy
import sys
import time
import types
from pathlib import Path

EXAMPLE = "examples/multimedia/avmnist_simple_late_fusion.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--multibench", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None,
                   help="speed runs: stop each epoch's training after this many batches and "
                        "skip the per-epoch test")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    root = args.multibench.resolve()
    if not (root / EXAMPLE).is_file():
        print(f"error: {root / EXAMPLE} not found: --multibench must be a MultiBench checkout",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    os.chdir(Path(os.environ.get("MB_WORKDIR", ".")))  # best.pt lands here

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    _stub_torchvision()

    import datasets.avmnist.get_data as get_data
    import training_structures.Supervised_Learning as supervised

    record: dict = {"epochs": [], "workers": args.workers, "threads": args.threads,
                    "torch": torch.__version__, "example": EXAMPLE}
    loaders: dict = {}
    original_loader = get_data.get_dataloader

    def get_dataloader(_path: str, **kwargs: object):
        kwargs["num_workers"] = args.workers
        started = time.perf_counter()
        train, valid, test = original_loader(str(args.data), **kwargs)
        record["load_s"] = time.perf_counter() - started
        if args.max_steps:  # speed runs: validation and test are not what is measured
            valid, test = Limited(valid, 2), Limited(test, 2)
        loaders["test"] = test
        return train, valid, test

    models: list = []
    original_init = supervised.MMDL.__init__

    def mmdl_init(self, *a, **k):  # keep a handle on the model train() builds
        original_init(self, *a, **k)
        models.append(self)

    original_train = supervised.train

    def train(encoders, fusion, head, train_loader, valid_loader, total_epochs, *a, **k):
        record["example_epochs"] = total_epochs
        record["params"] = sum(p.numel() for m in (*encoders, fusion, head) for p in m.parameters())
        timed = TimedLoader(train_loader, args.max_steps)
        hooked = EpochEnd(valid_loader, lambda: record["epochs"].append(
            {"epoch": len(record["epochs"]) + 1, **timed.last(),
             **({} if args.max_steps else _test_accuracies(models[-1], loaders["test"]))}))
        return original_train(encoders, fusion, head, timed, hooked, args.epochs, *a, **k)

    original_test = supervised.single_test

    def single_test(model, *a, **k):
        result = original_test(model, *a, **k)
        if not args.max_steps:
            record["best_test"] = _test_accuracies(model, loaders["test"])
        return result

    get_data.get_dataloader = get_dataloader
    supervised.MMDL.__init__ = mmdl_init
    supervised.train = train
    supervised.single_test = single_test
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch_load = torch.load
    torch.load = lambda f, *a, **k: torch_load(f, *a, **{**k, "weights_only": False})

    started = time.perf_counter()
    runpy.run_path(str(root / EXAMPLE), run_name="__main__")
    record["wall_s"] = time.perf_counter() - started
    text = json.dumps(record, indent=2)
    if args.json:
        args.json.write_text(text)
    print("MULTIBENCH_RESULT " + json.dumps(record))
    return 0


class TimedLoader:
    """Iterates the wrapped loader (at most ``max_steps`` batches); seconds and rows of each
    pass (= one training epoch)."""

    def __init__(self, loader, max_steps: int | None = None) -> None:
        self.loader, self.max_steps, self.passes = loader, max_steps, []

    def __iter__(self):
        rows, started = 0, time.perf_counter()
        for step, batch in enumerate(self.loader):
            if self.max_steps is not None and step >= self.max_steps:
                break
            rows += len(batch[-1])
            yield batch
        seconds = time.perf_counter() - started
        self.passes.append({"train_rows": rows, "train_s": seconds,
                            "samples_per_s": rows / seconds if seconds else None})

    def __len__(self) -> int:
        return len(self.loader)

    def last(self) -> dict:
        return self.passes[-1] if self.passes else {}


class Limited:
    """The first ``n`` batches of a loader."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                break
            yield batch

    def __len__(self) -> int:
        return min(self.n, len(self.loader))


class EpochEnd:
    """The valid loader, calling ``hook`` before each pass (the epoch's training just ended)."""

    def __init__(self, loader, hook) -> None:
        self.loader, self.hook = loader, hook

    def __iter__(self):
        self.hook()
        yield from self.loader

    def __len__(self) -> int:
        return len(self.loader)


def _test_accuracies(model, test_loader) -> dict:
    """Test accuracy with both inputs, with the image zeroed and with the audio zeroed."""
    import torch

    was_training = model.training
    model.eval()
    right = {"test_accuracy": 0, "audio_alone": 0, "image_alone": 0}
    total = 0
    with torch.no_grad():
        for image, audio, label in test_loader:
            image, audio = image.float(), audio.float()
            variants = {"test_accuracy": [image, audio],
                        "audio_alone": [torch.zeros_like(image), audio],
                        "image_alone": [image, torch.zeros_like(audio)]}
            for key, inputs in variants.items():
                right[key] += int((model(inputs).argmax(1) == label).sum())
            total += len(label)
    model.train(was_training)
    return {k: v / total for k, v in right.items()}


def _stub_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a wheel built for another torch raises RuntimeError, not ImportError
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        stub = types.ModuleType("torchvision")
        stub.models = types.ModuleType("torchvision.models")
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.models"] = stub.models


if __name__ == "__main__":
    sys.exit(main())
