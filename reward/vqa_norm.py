"""The EvalAI / VQA answer normaliser that TextVQA's accuracy uses (lmms-eval's behaviour).

Steps, in order (each mirrors the official VQA evaluation, quirks included):
1. lowercase; drop ``,`` and ``?``; ``'s`` -> `` 's``; newlines and tabs -> spaces; strip.
2. punctuation: each mark in ``_PUNCT`` is deleted if the text has it next to a space or has a
   digit-comma-digit group, else replaced by a space; then a ``.`` not followed by a digit is
   deleted (at most 32 of them: the reference passes ``re.UNICODE`` as the ``count``).
3. per word: number words zero..ten (and "none") -> digits, articles a/an/the dropped, missing
   apostrophes restored ("dont" -> "don't").
"""

from __future__ import annotations

import re

_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # the reference's count (re.UNICODE == 32)
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The contracted forms the VQA table restores. Its keys are these forms with ONE apostrophe
# removed (e.g. "couldn't've" <- "couldnt've" and "couldn'tve"); see _contraction_table.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've
you'd you'd've you'll you're you've
""".split()
_QUIRKS = {"somebody'd": "somebodyd"}  # a reversed entry in the reference table, kept as is


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for form in _CONTRACTED:
        for i, ch in enumerate(form):
            if ch == "'":
                table[form[:i] + form[i + 1 :]] = form
    table.update(_QUIRKS)
    return table


_CONTRACTIONS = _contraction_table()


def _punctuation(text: str) -> str:
    delete = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _PUNCT:
        gone = delete or (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if gone else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI normalisation: ``"Two  Dogs!"`` -> ``"2 dogs"``, ``"the cat's"`` -> ``"cat 's"``."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.strip().replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))
