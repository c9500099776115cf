"""Audio encoder "speech_embedding": Google's pretrained speech_embedding CNN, in PyTorch.

The architecture is rebuilt from ``embedding_model.onnx`` as openWakeWord 0.4.0 ships it
(Apache-2.0; only this file and melspectrogram.onnx are used, never the package's wake-word
heads) and its weights are read from the file's initializers, so it trains, exports and
compresses like any encoder. 20 convolutions, 329k parameters::

    (76 frames, 32 mel) -> conv3x3 24 -> ReLU -> BN -> act -> conv1x3 -> act -> conv3x1 -> act
      -> pool 2x2 -> 4 stages of [conv1x3, conv3x1] x 2 (48, 72, 96, 96 channels; act after
      each), pooled 1x2, 2x2, 1x2, 2x2 -> conv3x1 (96) -> (1, 1, 96)

with act = max(LeakyReLU(0.2), -0.4). Time is never padded and the pools stride 8 frames in
all, so the network is fully convolutional in time: run over a whole clip it gives exactly the
embeddings of openWakeWord's 76-frame windows taken every 8 frames, computing each frame once
instead of ~9.5 times. Input: ``features="speech_mel"`` frames (:mod:`mmfurnace.data.speech_mel`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfurnace.data.speech_mel import N_MELS, TOP_DB, WINDOW_FRAMES, WINDOW_STEP
from mmfurnace.errors import ConfigError, MissingDependencyError
from mmfurnace.models.layers import check_rank, masked_mean, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS

EMBEDDING_FILE = "embedding_model.onnx"
PACKAGE = "openwakeword"
INSTALL = "pip install 'mmfurnace[speech]' (it pins openwakeword==0.4.0; `make install` does it)"
OUT_DIM = 96
STAGES = ((48, (1, 2)), (72, (2, 2)), (96, (1, 2)), (96, (2, 2)))  # width, pool after
_SLOPE, _FLOOR = 0.2, -0.4


class ClippedLeakyReLU(nn.Module):
    """max(LeakyReLU(x, 0.2), -0.4): the activation after every conv but the last."""

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, _SLOPE).clamp(min=_FLOOR)


def _conv(cin: int, cout: int, kernel: tuple[int, int], *, bias: bool = True) -> nn.Conv2d:
    # (1, 3) convs pad the mel axis by one on each side; no conv pads time.
    return nn.Conv2d(cin, cout, kernel, padding=(0, kernel[1] // 2), bias=bias)


def _stage(cin: int, cout: int, pool: tuple[int, int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, kernel in enumerate(((1, 3), (3, 1), (1, 3), (3, 1))):
        layers += [_conv(cin if i == 0 else cout, cout, kernel), ClippedLeakyReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(pool))


class SpeechEmbeddingEncoder(nn.Module):
    """speech_embedding over speech_mel frames: one 96-d embedding per 76-frame window (every
    8 frames, 80 ms), pooled by a masked mean over the real windows.

    The stem's BatchNorm sits between a ReLU and the activation, so it cannot be folded into a
    conv; it is kept as a fixed per-channel affine (a depthwise 1x1 conv) and never uses batch
    statistics, so padding and absent rows cannot change other rows even when fine-tuned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 24, 3, bias=False),  # the mel axis is padded by 1 before it
            nn.ReLU(),
            nn.Conv2d(24, 24, 1, groups=24),  # the BatchNorm, as scale and shift
            ClippedLeakyReLU(),
            _conv(24, 24, (1, 3)),
            ClippedLeakyReLU(),
            _conv(24, 24, (3, 1)),
            ClippedLeakyReLU(),
            nn.MaxPool2d(2),
        )
        widths = [24] + [w for w, _ in STAGES]
        self.stages = nn.ModuleList(
            _stage(widths[i], w, pool) for i, (w, pool) in enumerate(STAGES)
        )
        self.head = nn.Conv2d(96, OUT_DIM, (3, 1), bias=False)
        self.out_dim = OUT_DIM
        self.grad_checkpointing = False
        # oneDNN runs these narrow convs faster with NHWC weights (the input's layout did not
        # matter): measured 1.4x per one-window clip, 1.3x per training step at batch 16.
        # Loading a state dict copies into these tensors and keeps the layout.
        self.to(memory_format=torch.channels_last)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def freeze_groups(self) -> list[nn.Module]:
        """Blocks in input order, for ``unfreeze_top``: stem, each stage, head."""
        return [self.stem, *self.stages, self.head]

    def embed(self, frames: Tensor) -> Tensor:
        """frames (batch, T >= 76, 32) -> (batch, (T - 76) // 8 + 1, 96), no masking."""
        h = F.pad(frames.unsqueeze(1), (1, 1))  # (batch, 1, T, 34)
        h = run_block(self.stem, h, checkpointing=self.grad_checkpointing)
        for stage in self.stages:
            h = run_block(stage, h, checkpointing=self.grad_checkpointing)
        return self.head(h).squeeze(3).transpose(1, 2)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, frames, 32) speech_mel features, valid (batch, frames) True=real ->
        sequence (batch, windows, 96), windows = (max(frames, 76) - 76) // 8 + 1, with a
        window's valid mask True when all its frames are real. A row with fewer than 76 real
        frames gets one real window, its missing frames filled with the row's silence floor
        (its maximum - 8), exactly what speech_mel's own padding with digital silence gives."""
        check_rank("speech_embedding", x, (3,), f"(batch, frames, {N_MELS}) speech_mel frames")
        if valid is None and x.shape[1] >= WINDOW_FRAMES and not torch.jit.is_tracing():
            # Every frame real (one clip, or clips of one length): nothing to mask. Measured
            # 2.96 vs 3.39 ms CPU per one-window clip in eager mode.
            sequence = self.embed(x)
            windows = torch.ones(sequence.shape[:2], dtype=torch.bool, device=x.device)
            return EncoderOutput(sequence, sequence.mean(1), windows)
        mask = (
            valid.to(torch.bool)
            if valid is not None
            else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        )
        x, mask = _at_least_one_window(x, mask)
        has_any = mask.any(1, keepdim=True)
        # A short row's first window counts as real: it is all the row has.
        head = mask[:, :WINDOW_FRAMES] | has_any
        window_frames = torch.cat([head, mask[:, WINDOW_FRAMES:]], 1)
        # speech_mel's silence is its 80 dB floor: the row's maximum - 8 after x / 10 + 2.
        peak = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=(1, 2), keepdim=True)
        floor = torch.where(has_any.unsqueeze(-1), peak - TOP_DB / 10.0, torch.zeros_like(peak))
        x = torch.where(mask.unsqueeze(-1), x, floor)
        sequence = self.embed(x)
        # A window is real when every one of its 76 frames is (a min-pool over the frame mask).
        windows = -F.max_pool1d(
            -window_frames.to(x.dtype).unsqueeze(1), WINDOW_FRAMES, WINDOW_STEP
        ).squeeze(1) > 0
        sequence = sequence.masked_fill(~windows.unsqueeze(-1), 0.0)
        return EncoderOutput(sequence, masked_mean(sequence, windows), windows)


def _at_least_one_window(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Pad (batch, frames, F) and its mask with padding frames up to 76 frames when shorter.

    Written as a gather over ``max(frames, 76)`` indices rather than an ``if``, so a traced
    or exported graph keeps the rule for every input length (export traces short examples)."""
    batch, _, feats = x.shape
    frames = torch._shape_as_tensor(x)[1]
    keep = torch.arange(torch.clamp(frames, min=WINDOW_FRAMES), device=x.device)
    x = torch.cat([x, x.new_zeros(batch, WINDOW_FRAMES, feats)], 1).index_select(1, keep)
    mask = torch.cat([mask, mask.new_zeros(batch, WINDOW_FRAMES)], 1).index_select(1, keep)
    return x, mask


# ------------------------------------------------------------------------ pretrained weights


def openwakeword_models_dir() -> Path:
    """openWakeWord's ``resources/models`` folder, found without importing the package (its
    import pulls in dependencies mmfurnace does not need). MissingDependencyError when absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"encoder 'speech_embedding' loads its weights from the {PACKAGE} package, which is "
            f"not installed: {INSTALL}; or set model.encoders.audio.path to a folder holding "
            f"{EMBEDDING_FILE}"
        )
    return Path(spec.origin).parent / "resources" / "models"


def embedding_model_path(path: str | Path | None = None) -> Path:
    """The speech_embedding ONNX file: ``path`` (the file or a folder holding it), else the
    one inside the installed openWakeWord package."""
    where = Path(path) if path is not None else openwakeword_models_dir()
    file = where / EMBEDDING_FILE if where.is_dir() or path is None else where
    if not file.is_file():
        hint = f"reinstall it: {INSTALL}" if path is None else f"expected {EMBEDDING_FILE} there"
        raise ConfigError(f"encoder 'speech_embedding': {file} not found; {hint}")
    return file


def load_onnx_weights(file: str | Path) -> dict[str, Tensor]:
    """A state dict for SpeechEmbeddingEncoder from ``embedding_model.onnx``'s initializers.

    Convs are matched in graph order and checked shape by shape, so another model's file is a
    ConfigError naming the first mismatch instead of silently wrong weights."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise MissingDependencyError(
            "encoder 'speech_embedding' reads its weights with the onnx package: "
            "pip install 'mmfurnace[onnx]'"
        ) from None
    try:
        graph = onnx.load(str(file)).graph
    except Exception as err:  # onnx raises DecodeError and others on a foreign file
        raise ConfigError(f"encoder 'speech_embedding': cannot read {file}: {err}") from None
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    norms = [n for n in graph.node if n.op_type == "BatchNormalization"]
    target = SpeechEmbeddingEncoder().state_dict()
    names = [k for k in target if k.endswith(".weight") and k != "stem.2.weight"]
    if len(convs) != len(names) or len(norms) != 1:
        raise ConfigError(
            f"encoder 'speech_embedding': {file} has {len(convs)} convs and {len(norms)} "
            f"batch norms; speech_embedding has {len(names)} and 1 (is it openWakeWord 0.4.0's "
            f"{EMBEDDING_FILE}?)"
        )
    state: dict[str, Tensor] = {}
    for node, name in zip(convs, names, strict=True):
        tensors = [init[i] for i in node.input[1:] if i in init]
        bias_name = name.replace(".weight", ".bias")
        expected = [tuple(target[name].shape)] + (
            [tuple(target[bias_name].shape)] if bias_name in target else []
        )
        if [tuple(t.shape) for t in tensors] != expected:
            raise ConfigError(
                f"encoder 'speech_embedding': {file}: conv {node.name!r} holds "
                f"{[tuple(t.shape) for t in tensors]}, expected {expected} for {name}"
            )
        state[name] = tensors[0]
        if len(tensors) > 1:
            state[bias_name] = tensors[1]
    bn = norms[0]
    gamma, beta, mean, var = (init[i] for i in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / torch.sqrt(var + eps)
    state["stem.2.weight"] = scale.reshape(-1, 1, 1, 1)
    state["stem.2.bias"] = beta - mean * scale
    return state


def pretrained_speech_embedding(path: str | Path | None = None) -> SpeechEmbeddingEncoder:
    """SpeechEmbeddingEncoder with Google's weights (see :func:`embedding_model_path`)."""
    encoder = SpeechEmbeddingEncoder()
    encoder.load_state_dict(load_onnx_weights(embedding_model_path(path)))
    return encoder


@ENCODERS.register("speech_embedding")
def speech_embedding(
    *, input_shape: tuple[int | None, ...], path: str | Path | None = None
) -> SpeechEmbeddingEncoder:
    if len(input_shape) != 2 or input_shape[-1] != N_MELS:
        raise ConfigError(
            f"encoder 'speech_embedding' needs speech_mel frames shaped (frames, {N_MELS}) "
            f"(data.audio.features=speech_mel; a packed dataset must be built with it), got {input_shape}"
        )
    return pretrained_speech_embedding(path)
