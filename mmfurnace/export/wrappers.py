"""Thin modules with flat tensor signatures around a MultimodalClassifier, for tracing/export.

Exporters and TorchScript want positional tensors, not dicts of tensors and NamedTuples.
Each wrapper takes its inputs in the order of the graph's ``inputs`` in the sidecar and
returns its outputs in the order of ``outputs``. The eager and compile runtimes run these
same wrappers, so every backend executes the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mmfurnace.export.spec import FULL_GRAPH, FUSION_GRAPH, GraphSpec, encoder_graph


def _logits(out: object) -> Tensor:
    # The classifier returns ClassifierOutput; fuse returns logits (or an output carrying them).
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    assert isinstance(logits, Tensor), f"expected logits, got {type(out).__name__}"
    return logits


class FlatClassifier(nn.Module):
    """forward(<m>, <m>_mask, <m>_present, ... in sidecar order) -> logits (batch, classes)."""

    def __init__(
        self,
        model: nn.Module,
        input_names: Sequence[str],
        modalities: Sequence[str],
        sequences: Sequence[str],
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.modalities = list(modalities)
        self.sequences = list(sequences)

    def forward(self, *flat: Tensor) -> Tensor:
        named = dict(zip(self.input_names, flat, strict=False))
        inputs = {m: named[m] for m in self.modalities}
        present = {m: named[f"{m}_present"] for m in self.modalities}
        valid = {m: named[f"{m}_mask"] for m in self.sequences}
        return _logits(self.model(inputs, present, valid))


class FlatEncoder(nn.Module):
    """forward(<m>[, <m>_mask], <m>_present) -> (<m>_sequence, <m>_pooled[, <m>_sequence_mask])."""

    def __init__(
        self, model: nn.Module, modality: str, input_names: Sequence[str], *, gives_mask: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.modality = modality
        self.input_names = list(input_names)
        self.gives_mask = gives_mask

    def forward(self, *flat: Tensor) -> tuple[Tensor, ...]:
        named = dict(zip(self.input_names, flat, strict=False))
        m = self.modality
        out = self.model.encode(m, named[m], named.get(f"{m}_mask"), named[f"{m}_present"])
        if self.gives_mask:
            assert out.valid is not None, f"encoder {m} stopped returning its valid mask"
            return out.sequence, out.pooled, out.valid
        return out.sequence, out.pooled


class FlatFusionHead(nn.Module):
    """forward(<m>_sequence, <m>_pooled[, <m>_sequence_mask], <m>_present, ...) -> logits."""

    def __init__(
        self, model: nn.Module, input_names: Sequence[str], modalities: Sequence[str]
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.modalities = list(modalities)

    def forward(self, *flat: Tensor) -> Tensor:
        from mmfurnace.models.outputs import EncoderOutput

        named = dict(zip(self.input_names, flat, strict=False))
        features = {
            m: EncoderOutput(
                named[f"{m}_sequence"], named[f"{m}_pooled"], named.get(f"{m}_sequence_mask")
            )
            for m in self.modalities
        }
        present = {m: named[f"{m}_present"] for m in self.modalities}
        return _logits(self.model.fuse(features, present))


def wrap_graph(
    model: nn.Module, graph: GraphSpec, modalities: Sequence[str], sequences: Sequence[str]
) -> nn.Module:
    """The flat module that computes ``graph`` (full model, one encoder, or the fusion head).

    It takes the mode of ``model``: exporters put the module they get back into its
    original mode afterwards, recursively, so a wrapper left in train mode would switch the
    wrapped model to train mode (dropout on) behind the caller's back."""
    names = graph.input_names
    wrapper: nn.Module
    if graph.name == FULL_GRAPH:
        wrapper = FlatClassifier(model, names, modalities, sequences)
    elif graph.name == FUSION_GRAPH:
        wrapper = FlatFusionHead(model, names, modalities)
    else:
        m = next((m for m in modalities if graph.name == encoder_graph(m)), None)
        assert m is not None, f"no wrapper for graph {graph.name!r}"
        wrapper = FlatEncoder(
            model, m, names, gives_mask=f"{m}_sequence_mask" in graph.output_names
        )
    wrapper.train(model.training)
    return wrapper
