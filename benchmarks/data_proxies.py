"""How hard is a built dataset per modality? Linear probes on its raw files.

    python benchmarks/data_proxies.py --root data/fsdd-mnist [--record] [--json out.json]
    python benchmarks/data_proxies.py --root data/tuxpaint --image-size 24

Trains scikit-learn LogisticRegression (C picked on valid from 0.01/0.1/1) on the train split
of any built dataset's ``raw/manifest.jsonl`` and reports valid/test accuracy of:
  image : the image's pixels at --image-size (grayscale datasets stay 1 channel)
  audio : mean and std over frames of mmfurnace's 20 MFCCs (16 kHz, the default preprocessing)
  text  : character 1-4-gram TF-IDF
  concat: every modality side by side, a missing one zero-filled plus a presence flag
  late  : the sum of the unimodal log-probabilities over the modalities a sample has
A sample without a modality counts as wrong for that modality's probe (unimodal rows are on
the whole split, like a unimodal model that sees nothing). Where provenance.jsonl names a
speaker, test accuracy is also given per speaker. --record stores the result in
raw/build.json under "proxy_accuracies" (written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mmfurnace.bench.machine import machine_info
from mmfurnace.data.audio import AudioPreprocessor
from mmfurnace.train.checkpoint import write_json_atomic

SPLITS = ("train", "valid", "test")
MODALITIES = ("image", "audio", "text")
C_GRID = (0.01, 0.1, 1.0)


def load(raw: Path, image_size: int) -> dict[str, dict[str, object]]:
    rows = [json.loads(line) for line in (raw / "manifest.jsonl").read_text().splitlines()]
    classes = json.loads((raw / "classes.json").read_text())
    provenance = {}
    if (raw / "provenance.jsonl").is_file():
        for line in (raw / "provenance.jsonl").read_text().splitlines():
            p = json.loads(line)
            provenance[p["id"]] = p
    first_image = next((r["image"] for r in rows if r.get("image")), None)
    gray = first_image is not None and Image.open(raw / first_image).mode == "L"
    audio = AudioPreprocessor(max_seconds=None)
    clip_features: dict[str, np.ndarray] = {}  # fsdd-mnist reuses each clip in many samples

    def audio_features(name: str) -> np.ndarray:
        if name not in clip_features:
            clip_features[name] = _mfcc_stats(audio, raw / name)
        return clip_features[name]

    out: dict[str, dict[str, object]] = {}
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        labels = [r["label"] if isinstance(r["label"], int) else classes.index(r["label"])
                  for r in part]  # fmt: skip
        out[split] = {
            "label": np.array(labels),
            "speaker": [provenance.get(r["id"], {}).get("speaker") for r in part],
            "image": [_pixels(raw / r["image"], image_size, gray) if r.get("image") else None
                      for r in part],  # fmt: skip
            "audio": [audio_features(r["audio"]) if r.get("audio") else None for r in part],
            "text": [r.get("text") for r in part],
        }
    return out


def _pixels(path: Path, size: int, gray: bool) -> np.ndarray:
    image = Image.open(path).convert("L" if gray else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32).ravel() / 255.0


def _mfcc_stats(pre: AudioPreprocessor, path: Path) -> np.ndarray:
    with torch.no_grad():
        mfcc = pre(path).numpy()
    return np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)])


def features(data: dict[str, dict[str, object]], modality: str) -> dict[str, object]:
    """Per split: (matrix with zero rows for missing samples, presence mask)."""
    present = {s: np.array([v is not None for v in data[s][modality]]) for s in SPLITS}
    if modality == "text":
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True)
        train_text = [t for t in data["train"]["text"] if t is not None]
        if not train_text:
            return {}
        vec.fit(train_text)
        mats = {s: vec.transform([t or "" for t in data[s]["text"]]) for s in SPLITS}
        return {"x": mats, "present": present}
    rows = [v for s in SPLITS for v in data[s][modality] if v is not None]
    if not rows:
        return {}
    dim = len(rows[0])
    dense = {s: np.stack([v if v is not None else np.zeros(dim, np.float32)
                          for v in data[s][modality]]) for s in SPLITS}  # fmt: skip
    scaler = StandardScaler().fit(dense["train"][present["train"]])
    mats = {s: csr_matrix(np.where(present[s][:, None], scaler.transform(dense[s]), 0.0))
            for s in SPLITS}  # fmt: skip
    return {"x": mats, "present": present}


def fit_probe(x: dict[str, object], y: dict[str, np.ndarray], rows: dict[str, np.ndarray],
              classes: int) -> tuple[LogisticRegression, float]:  # fmt: skip
    """Best C on valid (rows: which samples each split trains/scores on)."""
    best: tuple[float, LogisticRegression | None] = (-1.0, None)
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x["train"][rows["train"]],
                                                         y["train"][rows["train"]])
        acc = clf.score(x["valid"][rows["valid"]], y["valid"][rows["valid"]]) if rows[
            "valid"].any() else 0.0  # fmt: skip
        if acc > best[0]:
            best = (acc, clf)
    assert best[1] is not None
    return best[1], best[0]


def log_probs(clf: LogisticRegression, x: object, classes: int) -> np.ndarray:
    out = np.full((x.shape[0], classes), -1e9)
    out[:, clf.classes_] = clf.predict_log_proba(x)
    return out


def run(data: dict[str, dict[str, object]], classes: int) -> dict[str, object]:
    y = {s: np.asarray(data[s]["label"]) for s in SPLITS}
    prior = np.bincount(y["train"], minlength=classes).argmax()
    result: dict[str, object] = {}
    late = {s: np.zeros((len(y[s]), classes)) for s in SPLITS}
    concat: dict[str, list[object]] = {s: [] for s in SPLITS}
    preds: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        feats = features(data, m)
        if not feats:
            continue
        x, present = feats["x"], feats["present"]
        clf, _ = fit_probe(x, y, present, classes)
        row = {"coverage_test": round(float(present["test"].mean()), 4)}
        for s in ("valid", "test"):
            pred = np.full(len(y[s]), prior)
            if present[s].any():
                pred[present[s]] = clf.predict(x[s][present[s]])
                late[s][present[s]] += log_probs(clf, x[s][present[s]], classes)
            row[s] = round(float((pred == y[s]).mean()) * 100, 2)
            preds[f"{m}/{s}"] = pred
        result[m] = row
        for s in SPLITS:
            concat[s] += [x[s], csr_matrix(present[s][:, None].astype(np.float64))]
    xc = {s: hstack(concat[s]).tocsr() for s in SPLITS}
    everything = {s: np.ones(len(y[s]), bool) for s in SPLITS}
    clf, _ = fit_probe(xc, y, everything, classes)
    result["concat"] = {s: round(float(clf.score(xc[s], y[s])) * 100, 2) for s in ("valid", "test")}
    preds["concat/test"] = clf.predict(xc["test"])
    result["late"] = {s: round(float((late[s].argmax(1) == y[s]).mean()) * 100, 2)
                      for s in ("valid", "test")}  # fmt: skip
    preds["late/test"] = late["test"].argmax(1)
    speakers = np.array([s or "" for s in data["test"]["speaker"]])
    if speakers.any():
        result["test_per_speaker"] = {
            sp: {
                k.split("/")[0]: round(float((p[speakers == sp] == y["test"][speakers == sp]).mean()) * 100, 2)
                for k, p in preds.items() if k.endswith("/test")
            }
            for sp in sorted(set(speakers) - {""})
        }  # fmt: skip
    return result


def print_table(result: dict[str, object]) -> None:
    print(f"{'probe':<8} {'valid %':>8} {'test %':>8}")
    for name in (*MODALITIES, "concat", "late"):
        if name in result:
            print(f"{name:<8} {result[name]['valid']:>8.2f} {result[name]['test']:>8.2f}")
    for speaker, accs in result.get("test_per_speaker", {}).items():
        print(f"test, speaker {speaker}: " + ", ".join(f"{k} {v:.1f}" for k, v in accs.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="built dataset (holds raw/)")
    parser.add_argument("--image-size", type=int, default=16, help="probe image side (pixels)")
    parser.add_argument("--record", action="store_true", help="store in raw/build.json")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    raw = args.root / "raw"
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = load(raw, args.image_size)
    classes = len(json.loads((raw / "classes.json").read_text()))
    result = run(data, classes)
    result["settings"] = {"image_size": args.image_size, "c_grid": list(C_GRID),
                          "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    print_table(result)
    report = {"proxy_accuracies": result, "machine": machine_info()}
    if args.json:
        write_json_atomic(args.json, report)
    if args.record:
        build = json.loads((raw / "build.json").read_text())
        build["proxy_accuracies"] = {"script": "benchmarks/data_proxies.py", **result}
        write_json_atomic(raw / "build.json", build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
