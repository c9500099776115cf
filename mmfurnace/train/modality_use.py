"""Does a model use a modality at all? Told apart from "robust to losing it".

A modality whose content the model does not read looks perfectly robust (relative robustness
1.00 on every corruption of it), but the same numbers come from a model that never learned to
use it. Two measurements tell them apart, both on the same data:

    clean        every modality present
    chance       no modality present (the model's bias-only prediction: its own chance level)
    alone[m]     only m present
    shuffled[m]  m present everywhere, but each row gets another row's m (rolled by one row
                 within the batch): the model still sees a real, in-distribution input of m,
                 only not the one that belongs to the row (permutation importance)

    margin  = clean - chance                       what the model gains from its inputs
    ignored = alone[m] - chance < share * margin   m alone recovers under ``share`` of it
          and clean - shuffled[m] < share * margin and its content is worth under ``share``

Removal (m marked absent) is reported too but not used: a fusion never trained without m can
lose accuracy on an absent m because the input is new to it, not because it reads m (the
AV-MNIST early fusion whose audio branch had learned nothing lost 15 points without audio and
none with the audio of other rows). A modality useful only in combination with another is
useless alone but costly to shuffle: that one is used.
"""

from __future__ import annotations

from typing import Any

IGNORED_SHARE = 0.1


def modality_use(
    clean: float,
    chance: float,
    alone: dict[str, float],
    shuffled: dict[str, float],
    without: dict[str, float] | None = None,
    *,
    share: float = IGNORED_SHARE,
) -> dict[str, dict[str, Any]]:
    """Per modality in ``shuffled``: ``alone``, ``shuffled``, ``without`` (when given),
    ``gain_alone`` (alone - chance), ``loss_shuffled`` (clean - shuffled) and ``ignored``
    (module docstring). A model with no margin over chance uses nothing."""
    margin = clean - chance
    out: dict[str, dict[str, Any]] = {}
    for m in sorted(shuffled):
        gain, loss = alone[m] - chance, clean - shuffled[m]
        ignored = margin <= 0 or (gain < share * margin and loss < share * margin)
        out[m] = {"alone": alone[m], "shuffled": shuffled[m], "gain_alone": gain,
                  "loss_shuffled": loss, "ignored": bool(ignored)}
        if without is not None and m in without:
            out[m]["without"] = without[m]
    return out


def describe_ignored(use: dict[str, dict[str, Any]], chance: float) -> list[str]:
    """One sentence per ignored modality, for reports."""
    return [
        f"{m}: ignored by the model: alone {u['alone']:.3f} vs chance {chance:.3f}, another "
        f"row's {m} costs {u['loss_shuffled']:+.3f}; its corruption curves measure nothing "
        "(no robustness score)"
        for m, u in use.items()
        if u["ignored"]
    ]
