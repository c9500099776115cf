"""Does a model use a modality at all? Told apart from "robust to losing it".

A modality whose removal costs nothing looks perfectly robust (relative robustness 1.00 on
every corruption of it), but the same numbers come from a model that never learned to use
it. The two differ in what the modality does *alone*: a used modality predicts above chance
when it is the only one present; an ignored one does not.

For a modality m, with accuracies measured on the same data:

    clean      every modality present
    chance     no modality present (the model's bias-only prediction: its own chance level)
    alone[m]   only m present
    without[m] every modality but m present

    margin = clean - chance                        what the model gains from its inputs
    ignored = alone[m] - chance < share * margin   m alone recovers under ``share`` of it
          and clean - without[m] < share * margin  and removing m costs under ``share`` of it

Both conditions, because a modality can matter only in combination (useless alone, costly
to remove): that one is used. With ``share`` 0.1 and a model 60 points above chance, m is
ignored when alone it is within 6 points of chance and removing it costs under 6 points.
"""

from __future__ import annotations

from typing import Any

IGNORED_SHARE = 0.1


def modality_use(
    clean: float,
    chance: float,
    alone: dict[str, float],
    without: dict[str, float],
    *,
    share: float = IGNORED_SHARE,
) -> dict[str, dict[str, Any]]:
    """Per modality: ``alone``, ``without``, ``gain_alone`` (alone - chance), ``loss_without``
    (clean - without) and ``ignored`` (module docstring). A model with no margin over chance
    uses nothing, so every modality is ignored; ``alone`` must cover ``without``'s keys."""
    margin = clean - chance
    out: dict[str, dict[str, Any]] = {}
    for m in sorted(without):
        gain, loss = alone[m] - chance, clean - without[m]
        ignored = margin <= 0 or (gain < share * margin and loss < share * margin)
        out[m] = {"alone": alone[m], "without": without[m], "gain_alone": gain,
                  "loss_without": loss, "ignored": bool(ignored)}
    return out


def describe_ignored(use: dict[str, dict[str, Any]], chance: float) -> list[str]:
    """One sentence per ignored modality, for reports."""
    return [
        f"{m}: ignored by the model: alone {u['alone']:.3f} vs chance {chance:.3f}, removing it "
        f"costs {u['loss_without']:+.3f}; its corruption curves measure nothing (no robustness score)"
        for m, u in use.items()
        if u["ignored"]
    ]
