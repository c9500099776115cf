"""speech_embedding in PyTorch vs the ONNX originals openWakeWord 0.4.0 ships: parity and speed.

    python benchmarks/speech_embedding.py [--fsdd ../shared/data/fsdd/recordings] [--clips 300]
        [--rounds 20] [--json report/speech_embedding.json]

Parity, on real speech (FSDD's official test takes 0-4, 8 kHz, resampled to 16 kHz by the
project's resampler; plus each run of 4 consecutive clips joined, for many windows per clip):
max |ours - original| of the mel features (``features="speech_mel"`` vs melspectrogram.onnx
+ ``x / 10 + 2``) and of the 96-d window embeddings (the torch encoder, and the torch encoder
exported to ONNX, vs embedding_model.onnx on openWakeWord's 76-frame windows every 8 frames).

Speed, one clip at a time (batch 1, one thread each), interleaved in the same run, for three
clip lengths, features included:
  onnx-original    melspectrogram.onnx, then embedding_model.onnx on the stacked windows
                   (what openWakeWord's AudioFeatures does)
  torch-eager      speech_mel in torch + SpeechEmbeddingEncoder (fully convolutional in time)
  torch-onnx       speech_mel in torch + the encoder exported to ONNX, on ONNX Runtime
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
WINDOW, STEP = 76, 8


def load_clips(folder: Path, limit: int) -> list[torch.Tensor]:
    from mmfurnace.data.audio import load_wav

    files = sorted(p for p in folder.glob("*.wav") if int(p.stem.rsplit("_", 1)[1]) < 5)[:limit]
    if not files:
        raise SystemExit(f"no FSDD test clips (*_<0-4>.wav) in {folder}: pass --fsdd DIR")
    return [load_wav(f, target_rate=16000) for f in files]


class Original:
    """openWakeWord's two ONNX files on ONNX Runtime, run as its AudioFeatures runs them."""

    def __init__(self) -> None:
        import onnxruntime as ort

        from mmfurnace.models.encoders.speech_embedding import openwakeword_models_dir

        folder = openwakeword_models_dir()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.mel = ort.InferenceSession(str(folder / "melspectrogram.onnx"), opts, providers=["CPUExecutionProvider"])
        self.emb = ort.InferenceSession(str(folder / "embedding_model.onnx"), opts, providers=["CPUExecutionProvider"])

    def features(self, x: np.ndarray) -> np.ndarray:
        """x (samples,) int16-scale float32, already at least one window long -> (frames, 32)."""
        return np.squeeze(self.mel.run(None, {"input": x[None]})[0], (0, 1)) / 10 + 2

    def embeddings(self, x: np.ndarray) -> np.ndarray:
        spec = self.features(x)
        windows = np.stack([spec[i : i + WINDOW] for i in range(0, len(spec) - WINDOW + 1, STEP)])
        return self.emb.run(None, {"input_1": windows[..., None].astype(np.float32)})[0][:, 0, 0]


def export_encoder(encoder: torch.nn.Module, path: Path) -> Any:
    """The torch encoder as ONNX (dynamic batch and frames) on ONNX Runtime, one thread."""
    import onnxruntime as ort

    class Sequence(torch.nn.Module):
        def __init__(self, enc: torch.nn.Module) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.enc(x).sequence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Sequence(encoder), (torch.randn(1, 90, 32),), str(path), input_names=["x"],
                          output_names=["sequence"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "batch", 1: "frames"}, "sequence": {0: "batch", 1: "windows"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(clips: list[torch.Tensor], original: Original, encoder: Any, session: Any) -> dict[str, Any]:
    from mmfurnace.data.speech_mel import INT16_SCALE, MIN_SAMPLES, speech_mel

    joined = [torch.cat(clips[i : i + 4]) for i in range(0, len(clips) - 3, 4)]
    worst = {"mel": 0.0, "torch": 0.0, "torch_onnx": 0.0}
    peak = {"mel": 0.0, "emb": 0.0}
    windows = 0
    for clip in [*clips, *joined]:
        x = clip.numpy().astype(np.float32)
        x = np.pad(x, (0, max(0, MIN_SAMPLES - len(x)))) * INT16_SCALE
        ref_mel, ref = original.features(x), original.embeddings(x)
        feats = speech_mel(clip[None])
        with torch.no_grad():
            ours = encoder(feats).sequence[0].numpy()
        exported = session.run(None, {"x": feats.numpy()})[0][0]
        worst["mel"] = max(worst["mel"], float(np.abs(feats[0].numpy() - ref_mel).max()))
        worst["torch"] = max(worst["torch"], float(np.abs(ours - ref).max()))
        worst["torch_onnx"] = max(worst["torch_onnx"], float(np.abs(exported - ref).max()))
        peak["mel"] = max(peak["mel"], float(np.abs(ref_mel).max()))
        peak["emb"] = max(peak["emb"], float(np.abs(ref).max()))
        windows += len(ref)
    return {"clips": len(clips), "joined_clips": len(joined), "windows": windows,
            "max_abs_diff": worst, "max_abs_reference": peak}


def speed(clips: dict[str, torch.Tensor], original: Original, encoder: Any, session: Any,
          rounds: int) -> dict[str, Any]:
    from mmfurnace.bench.timing import median, time_interleaved
    from mmfurnace.data.speech_mel import INT16_SCALE, MIN_SAMPLES, speech_mel, speech_mel_frames

    out: dict[str, Any] = {}
    for label, clip in clips.items():
        x = np.pad(clip.numpy(), (0, max(0, MIN_SAMPLES - clip.numel()))).astype(np.float32) * INT16_SCALE
        batch = clip[None]

        def eager(batch: torch.Tensor = batch) -> None:
            with torch.no_grad():
                encoder(speech_mel(batch))

        def exported(batch: torch.Tensor = batch) -> None:
            session.run(None, {"x": speech_mel(batch).numpy()})

        fns = {"onnx-original": lambda x=x: original.embeddings(x), "torch-eager": eager, "torch-onnx": exported}
        timings = time_interleaved(fns, warmup=3, rounds=rounds, per_round=3)
        base = median(timings.wall["onnx-original"])
        base_cpu = median(timings.cpu["onnx-original"])
        out[label] = {
            "seconds": round(clip.numel() / 16000, 2),
            "windows": (speech_mel_frames(clip.numel()) - WINDOW) // STEP + 1,
            **{name: {"ms": round(median(t) * 1000, 3), "cpu_ms": round(median(timings.cpu[name]) * 1000, 3),
                      "speedup_vs_original": round(base / median(t), 2),
                      "cpu_speedup_vs_original": round(base_cpu / median(timings.cpu[name]), 2)}
               for name, t in timings.wall.items()},
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", type=Path, default=FSDD, help="folder of FSDD recordings")
    parser.add_argument("--clips", type=int, default=300, help="test clips for the parity check")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--json", type=Path, default=ROOT / "report" / "speech_embedding.json")
    args = parser.parse_args(argv)

    from mmfurnace.bench.machine import machine_info
    from mmfurnace.models.encoders.speech_embedding import pretrained_speech_embedding
    from mmfurnace.train.checkpoint import write_json_atomic

    torch.set_num_threads(1)
    machine = machine_info()
    isa = ", ".join(k for k, v in machine["cpu"].get("isa", {}).items() if v) or "unknown"
    clips = load_clips(args.fsdd, args.clips)
    original = Original()
    encoder = pretrained_speech_embedding().eval()
    with tempfile.TemporaryDirectory(prefix="mmf-speech-") as tmp:
        session = export_encoder(encoder, Path(tmp) / "encoder.onnx")
        par = parity(clips, original, encoder, session)
        longest = max(clips, key=lambda c: c.numel())
        lengths = {"short (0.4 s, padded to 1 window)": min(clips, key=lambda c: abs(c.numel() - 6400)),
                   "longest test clip": longest,
                   "4 clips joined": torch.cat(sorted(clips, key=lambda c: -c.numel())[:4])}
        spd = speed(lengths, original, encoder, session, args.rounds)
    result = {"machine": machine, "parity": par, "speed": spd}

    print(f"machine: {machine['cpu'].get('model')} | ISA: {isa} | 1 thread per engine | "
          f"load average {machine.get('load_average')}")
    d, p = par["max_abs_diff"], par["max_abs_reference"]
    print(f"\nparity on {par['clips']} FSDD test clips + {par['joined_clips']} joined runs "
          f"({par['windows']} windows):")
    print(f"  mel features   max |diff| {d['mel']:.2e}  (values up to {p['mel']:.1f})")
    print(f"  torch encoder  max |diff| {d['torch']:.2e}  (embeddings up to {p['emb']:.1f}; "
          f"relative {d['torch'] / p['emb']:.1e})")
    print(f"  torch->ONNX    max |diff| {d['torch_onnx']:.2e}  (relative {d['torch_onnx'] / p['emb']:.1e})")
    print("\nper clip, batch 1, median wall ms (x vs onnx-original; CPU-time ratio in brackets):")
    print(f"  {'clip':<36} {'s':>5} {'win':>4} {'onnx-original':>14} {'torch-eager':>20} {'torch-onnx':>20}")
    for label, row in spd.items():
        cells = [f"{row['onnx-original']['ms']:>14.2f}"] + [
            f"{row[n]['ms']:>7.2f} {row[n]['speedup_vs_original']:>5.2f}x [{row[n]['cpu_speedup_vs_original']:.2f}]"
            for n in ("torch-eager", "torch-onnx")]
        print(f"  {label:<36} {row['seconds']:>5} {row['windows']:>4} " + " ".join(cells))
    write_json_atomic(args.json, result)
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
