"""Post-training quantization: FP16/BF16 casts, INT8 dynamic and INT8 static (calibrated).

Which library does what:
- ``quantize_(model, config, filter_fn=...)`` works on the PyTorch module in place:
  HalfConfig -> ``model.to(dtype)``; Int8DynamicConfig(runtime="torch") ->
  ``torch.ao.quantization.quantize_dynamic`` on the selected nn.Linear (fbgemm/x86 INT8
  kernels; torch.ao.quantization is deprecated but is what ships in torch with eager CPU
  INT8 kernels — torchao's replacement runs its CPU INT8 path through torch.compile).
- ``quantize_onnx(src, dst, config, calibration=...)`` works on an exported ONNX graph with
  onnxruntime.quantization: ``quant_pre_process`` first, then ``quantize_dynamic`` or
  ``quantize_static`` (QDQ format, U8 activations x S8 per-channel weights, calibration
  MinMax / Percentile / Entropy over real batches fed by :class:`BatchReader`). This is the
  deployment runtime, so its INT8 numbers are compared with onnxruntime FP32 on the same
  machine, never with eager PyTorch.

The INT8 format follows the CPU (mmfurnace.export.int8_format): where ORT's U8S8 kernels sum
in 16 bits (x86 without VNNI) 8-bit weights saturate them, so ``int8_format="auto"`` quantizes
weights to 7 bits there (ORT's ``reduce_range``); "u8u8" stores the weights as U8 afterwards
(:func:`~mmfurnace.compress.int8_weights.weights_to_u8`). The choice is recorded in
export.json's ``compression.int8``.

Only MatMuls whose second input is a weight are quantized (``MatMulConstBOnly``): the
attention-score MatMuls (Q·Kᵀ, P·V) multiply two activations, lose the most accuracy and gain
little, and quantizing Softmax/Add/Where adds QLinear* ops that are slower than float. The
activations right after quantized layers (Relu, Clip, LeakyRelu) are quantized with them, and
short layers stay float only at the model's input (:func:`kept_float`), so a conv chain such as
EfficientNet-Lite's runs in INT8 from end to end instead of dequantizing at every ReLU6.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfurnace.compress.config import (
    HalfConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    QATConfig,
    config_dict,
)
from mmfurnace.compress.int8_weights import weights_to_u8
from mmfurnace.data.batch import Batch
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.export.int8_format import INT8_FORMATS, RECORD_KEY, resolve_int8_format
from mmfurnace.io import atomic_dir

FilterFn = Callable[[nn.Module, str], bool]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
STATIC_OPS = ("Conv", "MatMul", "Gemm")
# Activations quantized with the layer that produces them, so a chain of INT8 layers stays
# INT8: ORT folds Relu/Clip (ReLU6) into the producer's output range and runs LeakyRelu as
# QLinearLeakyRelu. Left float, each one Dequantizes and re-Quantizes its whole activation:
# 55 % of EfficientNet-Lite0's INT8 time (the tuxpaint demo model, batch 32: 537 -> 297 ms).
FOLDED_OPS = ("Relu", "Clip", "LeakyRelu")
ONNX_FILE = "model.onnx"


# --- PyTorch modules, in place -----------------------------------------------------------------


def quantize_(model: nn.Module, config: object, filter_fn: FilterFn | None = None) -> nn.Module:
    """Quantize ``model`` in place as ``config`` says; returns it.

    HalfConfig: cast parameters and buffers to float16/bfloat16 (``autocast=True`` leaves the
    weights alone: the runner applies autocast). Int8DynamicConfig(runtime="torch"): swap the
    nn.Linear layers ``filter_fn(module, name)`` selects (default: every Linear outside
    attention blocks) for torch.ao dynamic INT8 Linear. Static INT8 works on the exported
    graph: use :func:`quantize_onnx`.
    """
    if isinstance(config, HalfConfig):
        if not config.autocast:
            model.to(DTYPES[config.dtype])
        return model
    if isinstance(config, Int8DynamicConfig):
        if config.runtime != "torch":
            raise ConfigError(
                "Int8DynamicConfig.runtime: 'onnxruntime' quantizes the exported graph; call "
                "quantize_onnx(...) or use runtime='torch' to quantize the module in place"
            )
        return _dynamic_torch_(model, filter_fn or _default_linear_filter)
    if isinstance(config, Int8StaticConfig):
        raise ConfigError("Int8StaticConfig quantizes the exported ONNX graph: call quantize_onnx(...)")
    if isinstance(config, QATConfig):
        from mmfurnace.compress.qat import default_filter, prepare_qat_

        prepare_qat_(model, filter_fn or (lambda m, n: default_filter(m, n, min_reduction=config.min_reduction)))
        return model
    raise ConfigError(f"quantize_ does not take {type(config).__name__}")


def _default_linear_filter(module: nn.Module, name: str) -> bool:
    # nn.MultiheadAttention reads in_proj_weight/out_proj.weight directly; its out_proj is a
    # NonDynamicallyQuantizableLinear for that reason. The consistency projections are not
    # on the logits path.
    return (
        type(module) is nn.Linear and not name.startswith("projections.")
    )


def _dynamic_torch_(model: nn.Module, keep: FilterFn) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    names = {name for name, module in model.named_modules() if keep(module, name)}
    if not names:
        raise ConfigError("Int8DynamicConfig: filter_fn selected no nn.Linear layer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization is deprecated
        quantize_dynamic(model, qconfig_spec=names, dtype=torch.qint8, inplace=True)
    return model


# --- ONNX graphs (onnxruntime.quantization) ------------------------------------------------------


def export_onnx(model: nn.Module, info: DatasetInfo, out_dir: str | Path, *, config: Any | None = None,
                verify: bool = True, source: str | None = None) -> Path:
    """Export the whole classifier to ``out_dir/model.onnx`` + export.json (one graph, no split)."""
    from mmfurnace.export import export_model

    return export_model(model, info, out_dir, formats=("onnx",), split=False, verify=verify,
                        config=config, source=source)


class BatchReader:
    """onnxruntime CalibrationDataReader over real Batches (flattened, validated feeds)."""

    def __init__(self, export_dir: str | Path, batches: Iterable[Batch], onnx_path: str | Path) -> None:
        from mmfurnace.export import build_feed, load_spec

        self._spec = load_spec(export_dir)
        self._names = _input_names(onnx_path)
        self._build_feed = build_feed
        self._batches: Iterator[Batch] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        feed = self._build_feed(self._spec, batch)
        return {k: v for k, v in feed.items() if k in self._names}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (feed := self.get_next()) is not None:
            yield feed


def quantize_onnx(
    export_dir: str | Path,
    out_dir: str | Path,
    config: Int8DynamicConfig | Int8StaticConfig,
    *,
    calibration: Iterable[Batch] | None = None,
    nodes: Sequence[str] | None = None,
) -> Path:
    """Quantize ``export_dir``'s model.onnx with onnxruntime into a new export directory
    ``out_dir`` (model.onnx + export.json whose hashes and ``compression`` entry describe it),
    which RUNTIMES["onnxruntime"] runs like any export. Returns ``out_dir``.

    Int8StaticConfig needs ``calibration``: real batches (``config.num_batches`` are used).
    ``nodes``: quantize only these nodes of the pre-processed graph (see
    :func:`preprocessed`; the sensitivity analysis quantizes one layer at a time).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    export_dir, out_dir = Path(export_dir), Path(out_dir)
    if not isinstance(config, (Int8DynamicConfig, Int8StaticConfig)):
        raise ConfigError(f"quantize_onnx does not take {type(config).__name__}")
    fmt_record = resolve_int8_format(config.int8_format)
    fmt = INT8_FORMATS[fmt_record["format"]]
    with tempfile.TemporaryDirectory(prefix="mmfurnace-quant-") as tmp:
        # a private copy: onnxruntime writes <model>-inferred.onnx next to its input and deletes
        # it after, which races with another process quantizing the same cached graph
        pre = Path(shutil.copy(preprocessed(export_dir), Path(tmp) / "pre.onnx"))
        dst = Path(tmp) / ONNX_FILE
        only = list(nodes) if nodes is not None else []
        if isinstance(config, Int8DynamicConfig):
            if config.runtime != "onnxruntime":
                raise ConfigError("Int8DynamicConfig.runtime: quantize_onnx needs 'onnxruntime'")
            quantize_dynamic(
                pre, dst, op_types_to_quantize=list(config.op_types), per_channel=config.per_channel,
                reduce_range=fmt.reduce_range, weight_type=QuantType.QInt8, nodes_to_quantize=only,
                extra_options={"MatMulConstBOnly": True},
            )
        elif isinstance(config, Int8StaticConfig):
            if calibration is None:
                raise ConfigError("Int8StaticConfig needs calibration batches (real training data)")
            reader = BatchReader(export_dir, uniform_batches(_take(calibration, config.num_batches)), pre)
            quantize_static_file(pre, dst, reader, config, reduce_range=fmt.reduce_range, nodes=only)
        if fmt.weights == "u8":
            weights_to_u8(dst, dst)
        compression = {**config_dict(config), RECORD_KEY: fmt_record}
        if nodes is not None:
            compression["nodes"] = only
        return write_variant_export(export_dir, dst, out_dir, compression=compression)


def quantize_static_file(src: Path, dst: Path, reader: Any, config: Int8StaticConfig, *,
                         reduce_range: bool = False, nodes: Sequence[str] = ()) -> None:
    """QDQ static quantization of the ONNX file ``src`` (pre-processed) into ``dst``, calibrated
    on ``reader`` (an onnxruntime CalibrationDataReader): the layers and activations that
    ``config`` selects, short first layers kept float (:func:`kept_float`)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    short = [n["name"] for n in quantizable_nodes(src) if kept_float(n, config.min_reduction)]
    quantize_static(
        src, dst, reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.op_types or (*STATIC_OPS, *FOLDED_OPS)),
        nodes_to_quantize=list(nodes),
        nodes_to_exclude=[*config.exclude, *short],
        per_channel=config.per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=_calibration_method(config.calibration),
        extra_options=_calibration_options(config),
    )


def preprocessed(export_dir: str | Path) -> Path:
    """``export_dir``'s model.onnx after onnxruntime's ``quant_pre_process`` (shape inference +
    graph optimisation), cached under the temp directory by the graph's SHA-256. Symbolic
    shape inference gives up on some masked-attention graphs; ONNX's own shape inference is
    then used alone."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mmfurnace.export.spec import sha256_file

    src = Path(export_dir) / ONNX_FILE
    if not src.is_file():
        raise InputError(f"{export_dir}: no {ONNX_FILE}; export the model first")
    cache = Path(tempfile.gettempdir()) / "mmfurnace-quant-cache"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{sha256_file(src)[:24]}.pre.onnx"
    if target.is_file():
        return target
    tmp = target.with_suffix(f".{os.getpid()}.tmp.onnx")
    try:
        try:
            # on failure symbolic shape inference dumps sym_shape_infer_temp.onnx (+ data)
            # into the working directory: let it do so in a scratch one
            with tempfile.TemporaryDirectory(prefix="mmfurnace-symshape-") as scratch, _working_dir(scratch):
                quant_pre_process(str(src), str(tmp))
        except Exception:  # noqa: BLE001 - "Incomplete symbolic shape inference" and friends
            quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _working_dir(path: str) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantizable_nodes(onnx_path: str | Path, op_types: Iterable[str] = STATIC_OPS) -> list[dict[str, Any]]:
    """Nodes static quantization would touch: Conv/Gemm, and MatMuls whose second input is an
    initializer (a weight). Each as {"name", "op_type", "weight", "params", "reduction",
    "first"} (reduction: the length of each dot product — in_channels x kernel for a conv, K
    for a matmul; first: no such layer lies between the model's inputs and this one)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    wanted = set(op_types)

    def has_weight(node: Any) -> bool:
        return node.op_type in wanted and len(node.input) >= 2 and node.input[1] in dims

    def first_layer(node: Any) -> bool:
        # no weight layer upstream, through activations, masks and reshapes
        todo, seen = [t for t in node.input[:1]], set()
        while todo:
            tensor = todo.pop()
            up = producer.get(tensor)
            if up is None or tensor in seen:
                continue
            if has_weight(up):
                return False
            seen.add(tensor)
            todo.extend(t for t in up.input if t and t not in dims)
        return True

    out = []
    for node in graph.node:
        if not has_weight(node):
            continue
        shape = dims[node.input[1]]
        if node.op_type == "Conv":
            reduction = int(np.prod(shape[1:]))
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            reduction = shape[-1]
        else:
            reduction = shape[0]
        out.append({"name": node.name, "op_type": node.op_type, "weight": node.input[1],
                    "params": int(np.prod(shape)), "reduction": int(reduction), "first": first_layer(node)})
    return out


def kept_float(node: dict[str, Any], min_reduction: int) -> bool:
    """Whether static INT8 leaves this node (from :func:`quantizable_nodes`) in FP32: a short
    reduction on the model's raw input — a 5x5 conv on a 1-channel image runs several times
    slower as QLinearConv (the digits-av model: 12.0 -> 23.1 ms a batch of 32). Short layers
    inside the network (EfficientNet's depthwise and narrow 1x1 convs) are quantized: between
    INT8 neighbours a float one costs a Dequantize and a Quantize of its activation."""
    return node["reduction"] < min_reduction and node["first"]


def write_variant_export(base_dir: Path, onnx_file: Path, out_dir: Path, *, compression: dict[str, Any]) -> Path:
    """A new export directory: ``onnx_file`` as model.onnx next to a copy of ``base_dir``'s
    export.json, with file hashes redone and a ``compression`` entry. FP32 weights files of the
    base export are not copied (the ONNX graph is the artefact)."""
    from mmfurnace.export.spec import SIDECAR, sha256_file, write_spec

    raw = json.loads((base_dir / SIDECAR).read_text(encoding="utf-8"))
    with atomic_dir(out_dir) as staging:
        target = staging / ONNX_FILE
        shutil.copyfile(onnx_file, target)
        raw["files"] = {ONNX_FILE: {"sha256": sha256_file(target), "bytes": target.stat().st_size}}
        raw["formats"] = ["onnx"]
        for graph in raw["graphs"].values():
            graph["files"] = {k: v for k, v in graph["files"].items() if k == "onnx"}
        raw["model"] = {**raw.get("model", {}), "weights": None, "pickled": None}
        raw["compression"] = {**compression, "parent": str(base_dir)}
        write_spec(staging, raw)
    return out_dir


def uniform_batches(batches: list[Batch]) -> list[Batch]:
    """The batches padded to one length per sequence modality (masks mark the padding, so
    the model's output is unchanged), keeping only those of the first batch's size.

    onnxruntime's histogram calibrators (percentile, entropy) stack each tensor across
    calibration batches with ``np.asarray``, which fails when sequence lengths or batch
    sizes differ between batches."""
    from mmfurnace.data.batch import PAD_ID

    size = len(batches[0])
    batches = [b for b in batches if len(b) == size]
    like = {m: b.inputs[m] for b in batches for m in b.valid}  # an example tensor per modality
    longest = {m: max(b.valid[m].shape[1] for b in batches if m in b.valid) for m in like}
    out = []
    for b in batches:
        inputs, valid = dict(b.inputs), dict(b.valid)
        for m, n in longest.items():
            if m not in valid:  # absent from every row of this batch: all padding
                x = like[m]
                inputs[m] = x.new_full((size, n, *x.shape[2:]), PAD_ID if not x.is_floating_point() else 0)
                valid[m] = torch.zeros(size, n, dtype=torch.bool)
                continue
            extra = n - valid[m].shape[1]
            if extra == 0:
                continue
            x = inputs[m]
            fill = PAD_ID if not x.is_floating_point() else 0
            inputs[m] = torch.cat([x, x.new_full((x.shape[0], extra, *x.shape[2:]), fill)], dim=1)
            valid[m] = torch.cat([valid[m], valid[m].new_zeros(x.shape[0], extra)], dim=1)
        out.append(Batch(inputs=inputs, valid=valid, present=b.present, labels=b.labels))
    return out


def _input_names(onnx_path: str | Path) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input}


def _take(batches: Iterable[Batch], n: int) -> list[Batch]:
    out = []
    for batch in batches:
        out.append(batch)
        if len(out) >= n:
            break
    if not out:
        raise InputError("calibration data is empty: need at least one batch of real training data")
    return out


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def _calibration_options(config: Int8StaticConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"MatMulConstBOnly": True}
    if config.calibration == "percentile":
        options["CalibPercentile"] = config.percentile
    if config.calibration in ("percentile", "entropy"):
        options["CalibNumBins"] = 2048 if config.calibration == "percentile" else 512
    return options
