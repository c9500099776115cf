"""How hard is digits-av per modality? Fast linear proxies on the raw files.

    python benchmarks/digits_av_proxies.py --root data/digits-av [--build] [--record]
        [--set pca_components=4 --set image_noise_std=0.25 ...] [--json out.json]

Trains scikit-learn LogisticRegression on the train split and reports valid/test accuracy:
  image : the 28x28 pixels
  audio : mean and std over frames of 20 MFCCs (librosa; a dev dependency, used only here)
  text  : character 1-4-gram TF-IDF
  concat: the three feature sets side by side (early fusion)
  late  : the sum of the three unimodal log-probabilities (late fusion)
With --cnn EPOCHS, also a small image CNN and audio 1-D CNN (torch), as a check that a
learned encoder stays weak too, and their late fusion with the text proxy (late_cnn).
--record stores the numbers in raw/build.json under "proxy_accuracies".
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mmfurnace.data.builtin import Degradation, build_digits_av_raw

FRAMES = 160  # 1.6 s at a 10 ms hop, longer than any clip


def mfcc_frames(path: Path) -> np.ndarray:
    """(FRAMES, 20) MFCCs, zero-padded; the number of real frames is kept in row order."""
    import librosa

    audio, rate = sf.read(path, dtype="float32")
    mfcc = librosa.feature.mfcc(y=audio, sr=rate, n_mfcc=20, n_fft=512, hop_length=160).T
    return mfcc


def mfcc_stats(mfcc: np.ndarray) -> np.ndarray:
    return np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)])


def pad_frames(mfcc: np.ndarray) -> np.ndarray:
    out = np.zeros((FRAMES, mfcc.shape[1]), dtype=np.float32)
    out[: min(len(mfcc), FRAMES)] = mfcc[:FRAMES]
    return out


def load(raw: Path) -> dict[str, dict[str, object]]:
    rows = [json.loads(line) for line in (raw / "manifest.jsonl").read_text().splitlines()]
    out: dict[str, dict[str, object]] = {}
    for split in ("train", "valid", "test"):
        part = [r for r in rows if r["split"] == split]
        mfccs = [mfcc_frames(raw / r["audio"]) for r in part]
        out[split] = {
            "image": np.stack([
                np.asarray(Image.open(raw / r["image"]), dtype=np.float32).ravel() / 255.0 for r in part
            ]),
            "audio": np.stack([mfcc_stats(m) for m in mfccs]),
            "audio_frames": np.stack([pad_frames(m) for m in mfccs]),
            "text": [r["text"] for r in part],
            "label": np.array([r["label"] for r in part]),
        }  # fmt: skip
    return out


C_GRID = (0.01, 0.1, 1.0)
UNIMODAL = ("image", "audio", "text")


def _fit_best(x: dict[str, object], y: dict[str, np.ndarray]) -> LogisticRegression:
    """LogisticRegression with C chosen on the valid split."""
    fits = [LogisticRegression(C=c, max_iter=3000).fit(x["train"], y["train"]) for c in C_GRID]
    return max(fits, key=lambda m: m.score(x["valid"], y["valid"]))


def linear_proxies(data: dict[str, dict[str, object]]) -> dict[str, dict[str, np.ndarray]]:
    """Per split, per proxy: (n, 10) log-probabilities of the LogisticRegression models."""
    tr = data["train"]
    image_scaler = StandardScaler().fit(tr["image"])
    audio_scaler = StandardScaler().fit(tr["audio"])
    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True).fit(
        tr["text"]
    )

    def feats(d: dict[str, object]) -> dict[str, object]:
        f = {
            "image": image_scaler.transform(d["image"]),
            "audio": audio_scaler.transform(d["audio"]),
            "text": tfidf.transform(d["text"]),
        }
        # Each block scaled to about unit norm per row, so no modality wins by its width.
        blocks = [csr_matrix(f["image"] / np.sqrt(f["image"].shape[1])),
                  csr_matrix(f["audio"] / np.sqrt(f["audio"].shape[1])), f["text"]]  # fmt: skip
        f["concat"] = hstack(blocks).tocsr()
        return f

    x = {s: feats(d) for s, d in data.items()}
    y = {s: d["label"] for s, d in data.items()}
    models = {m: _fit_best({s: x[s][m] for s in x}, y) for m in (*UNIMODAL, "concat")}
    return {s: {m: models[m].predict_log_proba(x[s][m]) for m in models} for s in ("valid", "test")}


def small_cnns(
    data: dict[str, dict[str, object]], *, epochs: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Per split: log-probabilities of a small 2-D CNN on the images and a 1-D CNN on the
    MFCC frames, the epoch chosen on valid; a check that learned encoders stay weak too."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    frames = {s: torch.tensor(d["audio_frames"]) for s, d in data.items()}
    mean, std = frames["train"].mean((0, 1)), frames["train"].std((0, 1))
    inputs = {
        "audio": {s: ((f - mean) / std).transpose(1, 2) for s, f in frames.items()},
        "image": {s: torch.tensor(d["image"]).view(-1, 1, 28, 28) for s, d in data.items()},
    }
    nets = {
        "audio": nn.Sequential(
            nn.Conv1d(20, 64, 5, padding=2), nn.BatchNorm1d(64), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(64, 96, 5, padding=2), nn.BatchNorm1d(96), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(96, 96, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
            nn.Dropout(0.3), nn.Linear(96, 10),
        ),
        "image": nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Dropout(0.3), nn.Linear(64 * 49, 10),
        ),
    }  # fmt: skip
    y = {s: torch.tensor(d["label"]) for s, d in data.items()}
    out: dict[str, dict[str, np.ndarray]] = {"valid": {}, "test": {}}
    for name, net in nets.items():
        x = inputs[name]
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
        best = -1.0
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(y["train"])).split(64):
                loss = nn.functional.cross_entropy(net(x["train"][idx]), y["train"][idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                logp = {s: net(x[s]).log_softmax(-1).numpy() for s in ("valid", "test")}
            acc = float(np.mean(logp["valid"].argmax(1) == data["valid"]["label"]))
            if acc > best:
                best = acc
                for s in out:
                    out[s][f"{name}_cnn"] = logp[s]
    return out


def accuracies(
    data: dict[str, dict[str, object]], logps: dict[str, dict[str, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """Accuracy of every model, plus late fusions (sums of unimodal log-probabilities)."""
    result: dict[str, dict[str, float]] = {}
    for split, lp in logps.items():
        lp = dict(lp)
        lp["late"] = sum(lp[m] for m in UNIMODAL)
        if "audio_cnn" in lp:
            lp["late_cnn"] = lp["image_cnn"] + lp["audio_cnn"] + lp["text"]
        y = data[split]["label"]
        result[split] = {m: round(float(np.mean(p.argmax(1) == y)), 4) for m, p in lp.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/digits-av"))
    parser.add_argument("--build", action="store_true", help="(re)build the raw files first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="Degradation field=value")
    parser.add_argument("--record", action="store_true", help="write results into build.json")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cnn", type=int, default=0, metavar="EPOCHS",
                        help="also train small image/audio CNNs for this many epochs")  # fmt: skip
    args = parser.parse_args(argv)

    raw = args.root / "raw"
    if args.build:
        fields = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in args.set)}
        started = time.perf_counter()
        build_digits_av_raw(
            args.root, seed=args.seed, overwrite=True, degradation=Degradation(**fields)
        )
        print(f"built {raw} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    started = time.perf_counter()
    data = load(raw)
    logps = linear_proxies(data)
    if args.cnn:
        for split, lp in small_cnns(data, epochs=args.cnn, seed=args.seed).items():
            logps[split].update(lp)
    result = accuracies(data, logps)
    print(
        f"proxies computed in {time.perf_counter() - started:.1f}s on {platform.processor() or platform.machine()}"
    )
    print(f"{'split':<6} " + " ".join(f"{m:>9}" for m in result["test"]))
    for split, accs in result.items():
        print(f"{split:<6} " + " ".join(f"{v:>9.3f}" for v in accs.values()))
    report = {"proxy_accuracies": result, "machine": platform.platform()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        build = json.loads((raw / "build.json").read_text())
        build["proxy_accuracies"] = {"script": "benchmarks/digits_av_proxies.py", **result}
        (raw / "build.json").write_text(json.dumps(build, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
