"""The GET_CROPS tool protocol: system prompt, strict format/parse, and the 2-turn conversation.

A tool call is a whole assistant turn of the form ``GET_CROPS: ['0','5']`` (the paper's plain-text
format). Anything else is an answer. Parsing is strict, and each malformed case has one outcome:

| text (after strip)                       | outcome                                   |
|------------------------------------------|-------------------------------------------|
| no ``GET_CROPS`` anywhere                | ``None`` (a direct answer)                |
| ``GET_CROPS: ['3']`` / ``["3", "0"]`` / ``[3, 0]`` | ``[3]`` / ``[3, 0]`` (order kept)  |
| ``GET_CROPS: []``                        | ToolCallError("empty")                     |
| id of 1-2 ASCII digits outside 0..8      | ToolCallError("out-of-range")              |
| ``'all'``, ``'x'``, ``'-1'``, ``'003'``, ``'³'``, ``'٣'``, ``'３'`` | ToolCallError("bad-item") |
| more than 9 ids                          | ToolCallError("too-many")                  |
| the same id twice                        | ToolCallError("duplicate")                 |
| text before/after the call               | ToolCallError("junk")                      |
| ``GET_CROPS: ['3'`` (cut off)            | ToolCallError("partial")                   |

An episode has at most one call: the turn after the crops is the answer, and ``parse_answer``
turns any ``GET_CROPS`` in it (a second call, well-formed or not) into ToolCallError("second-call").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from awares_rl.core.crops import CROP_NAMES, NUM_CROPS

TOOL_NAME = "GET_CROPS"

SYSTEM_PROMPT = (
    "You see a low-resolution view of an image. If the resolution is too low for an accurate "
    "answer, respond only with GET_CROPS: [...] naming the regions you need (0 top-left, "
    "1 top-right, 2 bottom-left, 3 bottom-right, 4 center, 5 top, 6 bottom, 7 left, 8 right). "
    "Otherwise give your answer."
)
CROPS_INTRO = "Here are the requested crops at full resolution: {names}. Now answer the question."

_CALL = re.compile(r"GET_CROPS\s*:\s*\[(?P<items>[^\[\]]*)\]")
_ITEM = re.compile(r"""^(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<bare>[^'"\s]+))$""")
_CROP_ID = re.compile(r"[0-9]{1,2}")  # ASCII only: str.isdigit() and \d also take '³', '٣', '３'


class ToolCallError(ValueError):
    """A malformed GET_CROPS call; ``reason`` is one of: empty, bad-item, out-of-range, too-many,
    duplicate, junk, partial, second-call."""

    def __init__(self, reason: str, text: str, detail: str = "") -> None:
        self.reason, self.text = reason, text
        super().__init__(f"invalid GET_CROPS call ({reason}{': ' + detail if detail else ''}): {text!r}")


def format_tool_call(crop_ids: Sequence[int]) -> str:
    """``[0, 5]`` -> ``"GET_CROPS: ['0','5']"``; ids must be unique and in 0..8."""
    ids = list(crop_ids)
    if not ids or len(set(ids)) != len(ids) or any(not 0 <= c < NUM_CROPS for c in ids):
        raise ValueError(f"crop ids must be a non-empty list of unique ints in 0..8, got {ids}")
    return f"{TOOL_NAME}: [" + ",".join(f"'{c}'" for c in ids) + "]"


def _parse_item(item: str, text: str) -> int:
    m = _ITEM.match(item.strip())
    value = m and (m["sq"] if m["sq"] is not None else m["dq"] if m["dq"] is not None else m["bare"])
    if not value or not _CROP_ID.fullmatch(value.strip()):
        raise ToolCallError("bad-item", text, f"{item.strip()!r} is not a crop id 0..8")
    crop = int(value.strip())
    if not 0 <= crop < NUM_CROPS:
        raise ToolCallError("out-of-range", text, f"crop id {crop} is not in 0..8")
    return crop


def parse_tool_call(text: str) -> list[int] | None:
    """Crop ids named by a tool-call turn, ``None`` for an answer; raises ToolCallError."""
    stripped = text.strip()
    if TOOL_NAME not in stripped:
        return None
    m = _CALL.search(stripped)
    if m is None:
        raise ToolCallError("partial", text, "no closing ']' after GET_CROPS: [")
    if m.start() != 0 or m.end() != len(stripped):
        raise ToolCallError("junk", text, "a tool call must be the whole turn")
    items = m["items"].strip()
    if not items:
        raise ToolCallError("empty", text)
    if items.count(",") >= NUM_CROPS:
        raise ToolCallError("too-many", text, f"more than {NUM_CROPS} crop ids")
    crops = [_parse_item(it, text) for it in items.split(",")]
    if len(set(crops)) != len(crops):
        raise ToolCallError("duplicate", text, f"crop ids {crops} repeat")
    return crops


def parse_answer(text: str) -> str:
    """The answer turn after the crops, as is; raises ToolCallError("second-call") if it calls
    the tool again (any ``GET_CROPS``, well-formed or not: one call per episode)."""
    if TOOL_NAME in text:
        raise ToolCallError("second-call", text, "the turn after the crops must answer")
    return text


def first_turn_messages(question: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages for turn 1: system prompt, then the low-res image and the question."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]


def crops_user_message(crop_ids: Sequence[int]) -> dict:
    """The user turn that returns the crops (one image each, in the order requested)."""
    names = ", ".join(f"{c} {CROP_NAMES[c]}" for c in crop_ids)
    content: list[dict] = [{"type": "image"} for _ in crop_ids]
    content.append({"type": "text", "text": CROPS_INTRO.format(names=names)})
    return {"role": "user", "content": content}
