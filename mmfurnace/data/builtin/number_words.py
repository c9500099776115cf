"""The text modality of digits-av: a digit's number word, in some language, with typos.

The text is synthetic and derived from the label: a hand-written table of number words,
optionally wrapped in a short English template, with character typos (swap, drop,
insert, substitute) applied to the number word at a per-sample rate.
"""

from __future__ import annotations

import numpy as np

# Hand-written; index = digit. Spelling as the language writes it (accents kept).
NUMBER_WORDS: dict[str, tuple[str, ...]] = {
    "english": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "german": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "french": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "spanish": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "italian": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    "portuguese": ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
    "dutch": ("nul", "een", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen"),
    "swedish": ("noll", "ett", "två", "tre", "fyra", "fem", "sex", "sju", "åtta", "nio"),
}
LANGUAGES: tuple[str, ...] = tuple(sorted(NUMBER_WORDS))

# "{w}" appears more than once so that about a third of the texts are the bare word.
TEMPLATES: tuple[str, ...] = (
    "{w}",
    "{w}",
    "{w}",
    "he said {w}",
    "she wrote {w}",
    "the number {w}",
    "it was {w}",
    "i think {w}",
    "{w} please",
    "maybe {w}?",
)

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def add_typos(word: str, rate: float, rng: np.random.Generator) -> str:
    """Corrupt ``word``: each character is, with probability ``rate``, swapped with the
    next one, dropped, preceded by a random letter, or replaced by a random letter.

    Never returns an empty string (a fully dropped word becomes one random letter).
    """
    chars = list(word)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if rng.random() >= rate:
            out.append(c)
            i += 1
            continue
        op = int(rng.integers(4))
        if op == 0 and i + 1 < len(chars):  # swap with the next character
            out.extend((chars[i + 1], c))
            i += 2
            continue
        if op == 1:  # drop
            pass
        elif op == 2:  # insert a letter before
            out.extend((_LETTERS[int(rng.integers(26))], c))
        else:  # substitute (also the swap case at the last character)
            out.append(_LETTERS[int(rng.integers(26))])
        i += 1
    return "".join(out) or _LETTERS[int(rng.integers(26))]


def noisy_number_text(
    digit: int, rng: np.random.Generator, *, typo_rate: tuple[float, float]
) -> tuple[str, dict[str, object]]:
    """One text for ``digit``: a random language's word, typos at a rate drawn uniformly
    from ``typo_rate``, in a random template. Returns (text, provenance)."""
    assert 0 <= digit <= 9
    language = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
    rate = float(rng.uniform(*typo_rate))
    word = add_typos(NUMBER_WORDS[language][digit], rate, rng)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(w=word), {"language": language, "typo_rate": round(rate, 4)}
