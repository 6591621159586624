"""A tolerant LRS-VQA score, reported next to (never instead of) the paper's.

The paper's rule (:func:`lrs_plugin.scoring.rules.lrs_is_correct`) rejects answers that only differ from the ground
truth in form: ``"t shaped"`` for ``"t-shaped"``, ``"parking lots"`` for ``"parking lot"``, ``"yes."`` for ``"yes"``,
``"dark grey"`` for ``"dark gray"``, ``"rectangle"`` for ``"rectangular"`` (the ground truths themselves use both),
``"twenty one"`` for ``"21"`` (WordNet 3.0 knows ``ten``/``10`` and ``twenty-one``/``21``, not the spaced form).
:func:`tolerant_is_correct` accepts an answer that the paper's rule accepts, or whose :func:`answer_key` equals the
ground truth's. The key is built by these steps, each one an audited, tested entry of the tables below (built from
the 7,333 ground truths of ``LRS_VQA_merged.jsonl``; ``tasks/lrs_vqa/README.md`` lists what each touches):

1. HTML entities and typographic quotes are undone (one ground truth reads ``can&rsquo;t determine``);
2. lower case; punctuation and spaces at either end are dropped (``"Yes."`` -> ``yes``);
3. tokens are split on spaces, hyphens and underscores (``t-shaped`` = ``t shaped``), a leading article is dropped
   (``a road`` = ``road``);
4. each token is singularised (``lots`` -> ``lot``; never ``yes``, words in ``-ss``/``-us``/``-is``, or 3 letters
   or fewer), then mapped through :data:`WORD_ALIASES` (British spellings, shape nouns to their adjectives,
   ``shape`` -> ``shaped``);
5. number words become digits, tens and units joined (``twenty one`` -> ``21``, :data:`NUMBER_WORDS`);
6. the whole phrase is mapped through :data:`PHRASE_ALIASES` (the ways the ground truths say "cannot tell");
7. the tokens are joined without separators (``semi-circular`` = ``semicircular``).

Nothing semantic is added: ``boat``/``ship``, ``urban area``/``urban``, ``parked``/``parking`` stay wrong. The tasks
report the tolerant AA as ``aa_tolerant`` and the count of answers it rescues as ``tolerant_rescued``; ``aa`` (the
paper's rule) stays the default and the leaderboard's number.
"""

from __future__ import annotations

import html
import re

from lrs_plugin.scoring.rules import lrs_is_correct

__all__ = [
    "NUMBER_WORDS",
    "PHRASE_ALIASES",
    "TOLERANT_VERSION",
    "WORD_ALIASES",
    "answer_key",
    "tolerant_is_correct",
]

#: Version of the tables and steps; bumped on any change that can change a tolerant score.
TOLERANT_VERSION = 1

#: Token aliases: spelling variants and the noun / short forms of the shape adjectives the ground truths use.
WORD_ALIASES: dict[str, str] = {
    # British / American spellings (ground truths: grey 143, gray 42; dark grey / dark gray; multicolor(ed))
    "grey": "gray",
    "greyish": "grayish",
    "colour": "color",
    "coloured": "colored",
    "multicolour": "multicolored",
    "multicoloured": "multicolored",
    "multicolor": "multicolored",
    "harbour": "harbor",
    "aeroplane": "airplane",
    "centre": "center",
    "metre": "meter",
    # shape nouns -> the adjectives (ground truths: rectangular 366 / rectangle 38, circular 106 / circle 8,
    # triangular 33 / triangle 5, l-shaped 5 / l-shape 1, t-shaped 29 / t-shape 1, semicircular / semi-circular)
    "rectangle": "rectangular",
    "circle": "circular",
    "triangle": "triangular",
    "semicircle": "semicircular",
    "cylinder": "cylindrical",
    "hexagon": "hexagonal",
    "octagon": "octagonal",
    "trapezoid": "trapezoidal",
    "trapezium": "trapezoidal",
    "shape": "shaped",
}

#: Number words, 0-20 and the tens to 90 (count ground truths are 1-20).
NUMBER_WORDS: dict[str, int] = {
    **{
        w: i
        for i, w in enumerate(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen twenty".split()
        )
    },
    **{w: 10 * i for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), start=3)},
}

_UNDETERMINED = "undetermined"
#: Whole-answer aliases after steps 1-5 (space-joined): the ground truths' ways of saying "cannot tell" (rural or
#: urban: undetermined 6, indeterminable 1, undeterminable 1, it is ambiguous 1; object color: can't determine 1).
PHRASE_ALIASES: dict[str, str] = {
    "undeterminable": _UNDETERMINED,
    "indeterminable": _UNDETERMINED,
    "indeterminate": _UNDETERMINED,
    "it is ambiguous": _UNDETERMINED,
    "ambiguous": _UNDETERMINED,
    "can't determine": _UNDETERMINED,
    "cannot determine": _UNDETERMINED,
    "cannot be determined": _UNDETERMINED,
    "can't be determined": _UNDETERMINED,
    "not determinable": _UNDETERMINED,
}

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_EDGE = " \t\n.,;:!?\"'()[]{}"
_SPLIT = re.compile(r"[\s\-_]+")
_ARTICLES = ("a", "an", "the")
_NOT_PLURAL = frozenset({"yes", "always", "perhaps", "series", "species", "news", "canvas", "atlas", "lens"})


def _singular(token: str) -> str:
    if len(token) <= 3 or token in _NOT_PLURAL or token.endswith(("ss", "us", "is")) or not token.endswith("s"):
        return token
    if token.endswith("ies"):
        return token[:-3] + "y"
    if token.endswith(("ches", "shes", "xes", "zes")):
        return token[:-2]
    return token[:-1]


def _numbers(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        value = NUMBER_WORDS.get(tokens[i])
        nxt = NUMBER_WORDS.get(tokens[i + 1]) if i + 1 < len(tokens) else None
        if value is not None and value >= 20 and value % 10 == 0 and nxt is not None and 1 <= nxt <= 9:
            out.append(str(value + nxt))
            i += 2
            continue
        out.append(str(value) if value is not None else tokens[i])
        i += 1
    return out


def answer_key(text: str) -> str:
    """The form an answer is compared in by the tolerant rule (module doc, steps 1-7); ``""`` for an empty answer.

    >>> answer_key("The T-Shape.")
    'tshaped'
    >>> answer_key("twenty one")
    '21'
    """
    text = html.unescape(text).translate(_QUOTES).lower().strip(_EDGE)
    tokens = [t for t in _SPLIT.split(text) if t]
    if len(tokens) > 1 and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    tokens = _numbers([WORD_ALIASES.get(_singular(t), _singular(t)) for t in tokens])
    phrase = " ".join(tokens)
    phrase = PHRASE_ALIASES.get(phrase, phrase)
    return phrase.replace(" ", "")


def tolerant_is_correct(pred: str, gt: str, synonyms: str = "wordnet") -> bool:
    """Whether ``pred`` answers ``gt`` by the paper's rule or by the tolerant one (equal :func:`answer_key`).

    Args:
        pred: Model answer.
        gt: Ground truth.
        synonyms: The paper's rule used first (``"wordnet"`` or ``"exact"``).

    Returns:
        ``True`` iff :func:`~lrs_plugin.scoring.rules.lrs_is_correct` accepts the answer, or both keys are equal and
        not empty. An empty answer is never correct.
    """
    if lrs_is_correct(pred, gt, synonyms=synonyms):
        return True
    key = answer_key(pred)
    return bool(key) and key == answer_key(gt)
