"""OpenRLHF's remote-reward contract, mapped onto RewardRequest / RewardParts.

OpenRLHF (``openrlhf/utils/agent.py``, 0.11) POSTs ``{"query": [...], "prompts": [...],
"labels": [...]}`` where ``query[i]`` is the whole decoded conversation (special tokens kept),
``prompts[i]`` the prompt it started from and ``labels[i]`` the dataset's label; it reads
``{"rewards": [...], "scores": [...], "extra_logs": {name: [...]}}`` (lists aligned with
``query``). Here ``rewards`` = R, ``scores`` = R_ans (in [0, 1], what OpenRLHF's dynamic filtering
expects) and ``extra_logs`` carries the reward parts.

The response turns are the assistant turns after the prompt (Qwen chat markup): turn 1 is either
an answer or a GET_CROPS call; after a call, the last assistant turn is the final answer, and a
GET_CROPS after the first call makes the response invalid ("second-call", like a malformed call).
A label is a plain answer string, a JSON list of answers, or a JSON object
``{"answers": [...], "metric": "anls", "needs_high_res": true}`` (a dict when sent as JSON).
The AwaRes agent (reward/openrlhf_agent.py) reads the object form with the sample's image too:
``{"id": ..., "image": "/abs/path.png", "answers": [...], "metric": ..., "needs_high_res": ...}``
(``agent_label`` writes it, ``parse_agent_label`` reads it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from awares_rl.core.episode import RewardParts
from awares_rl.core.protocol import ToolCallError, parse_answer, parse_tool_call
from awares_rl.core.sample import Sample
from reward.scoring import RewardRequest

ASSISTANT = "<|im_start|>assistant"
TURN_END = "<|im_end|>"
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def clean_turn(turn: str) -> str:
    """One assistant turn's text: up to its ``<|im_end|>``, special tokens dropped, stripped."""
    return _SPECIAL.sub("", turn.split(TURN_END, 1)[0]).strip()


def response_turns(query: str, prompt: str | None) -> list[str]:
    """The generated assistant turns of ``query`` (texts without markup), in order.

    With chat markup, turns are counted by ``<|im_start|>assistant`` headers, so a prompt whose
    image pads were expanded in the query still lines up. Without markup, the text after the
    prompt (or the whole query) is one turn.
    """
    prompt = prompt or ""
    segments = query.split(ASSISTANT)
    if len(segments) == 1:
        return [clean_turn(query[len(prompt) :] if query.startswith(prompt) else query)]
    in_prompt = prompt.count(ASSISTANT)
    opens_turn = prompt.rstrip().endswith(ASSISTANT)  # the generation prompt is part of the prompt
    first = in_prompt if opens_turn else in_prompt + 1
    return [clean_turn(seg.removeprefix("\n")) for seg in segments[max(first, 1) :]]


def parse_response(turns: Sequence[str]) -> tuple[str | None, list[int], str | None]:
    """(final answer or None, crop ids taken, ToolCallError reason or None) from the turns."""
    if not turns:
        return None, [], None
    try:
        crops = parse_tool_call(turns[0])
    except ToolCallError as e:
        return None, [], e.reason
    if crops is None:
        return turns[0], [], None
    try:
        answers = [parse_answer(turn) for turn in turns[1:]]
    except ToolCallError as e:
        return None, crops, e.reason
    return (answers[-1] if answers else None), crops, None


def parse_label(label: object, where: str = "label") -> tuple[list[str], str | None, bool | None]:
    """(references, metric, needs_high_res) from one OpenRLHF label; ValueError names ``where``."""
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)  # a numeric answer column
    if isinstance(label, str) and label.strip()[:1] in ("{", "["):
        try:
            label = json.loads(label)
        except json.JSONDecodeError:
            pass  # an answer that merely starts with a bracket
    if isinstance(label, str):
        return [label], None, None
    if isinstance(label, list) and label and all(isinstance(a, str) for a in label):
        return list(label), None, None
    if isinstance(label, dict):
        answers = label.get("answers", label.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        needs = label.get("needs_high_res")
        if (
            isinstance(answers, list)
            and answers
            and all(isinstance(a, str) for a in answers)
            and isinstance(needs, (bool, type(None)))
        ):
            metric = label.get("metric")
            return list(answers), metric if isinstance(metric, str) else None, needs
    raise ValueError(
        f"{where} must be an answer string, a non-empty list of answers, or an object "
        f'{{"answers": [...], "metric": ..., "needs_high_res": ...}}; got {label!r}'
    )


def agent_label(sample: Sample, jsonl_path: str | Path) -> str:
    """The agent's label of ``sample`` (listed in ``jsonl_path``) as a JSON string, so a dataset
    loader keeps it one string column; the image path is made absolute."""
    return json.dumps({
        "id": sample.id, "image": str(sample.image_path(jsonl_path)), "answers": list(sample.answers),
        "metric": sample.metric, "needs_high_res": sample.needs_high_res,
    }, ensure_ascii=False)


def parse_agent_label(
    label: object, where: str = "label"
) -> tuple[str, list[str], str | None, bool | None]:
    """(image path, references, metric, needs_high_res) from an ``agent_label``; ValueError
    naming ``where`` and the fix."""
    obj = label
    if isinstance(label, str):
        try:
            obj = json.loads(label)
        except json.JSONDecodeError:
            obj = None
    image = obj.get("image") if isinstance(obj, dict) else None
    if not isinstance(image, str) or not image:
        raise ValueError(
            f'{where} must be a JSON object naming its "image" (the AwaRes agent crops it); got '
            f"{label!r}: convert the Sample JSONL with `awares-rl data openrlhf --src ... --out ...`"
        )
    return (image, *parse_label(obj, where))


def openrlhf_requests(
    queries: Sequence[str], prompts: Sequence[str] | None, labels: Sequence[object]
) -> list[RewardRequest]:
    """One RewardRequest per query (the three lists aligned)."""
    requests = []
    for i, query in enumerate(queries):
        refs, metric, needs = parse_label(labels[i], where=f"labels[{i}]")
        answer, crops, invalid = parse_response(
            response_turns(query, prompts[i] if prompts else None)
        )
        requests.append(RewardRequest(answer, refs, metric, needs, crops, invalid))
    return requests


def openrlhf_response(parts: Sequence[RewardParts], requests: Sequence[RewardRequest]) -> dict:
    """``{"rewards", "scores", "extra_logs"}`` as OpenRLHF reads it."""
    return {
        "rewards": [p.total for p in parts],
        "scores": [p.answer for p in parts],
        "extra_logs": {
            "answer_reward": [p.answer for p in parts],
            "crop_cost": [p.crop_cost for p in parts],
            "format_reward": [p.format for p in parts],
            "num_crops": [float(len(set(r.crop_ids))) for r in requests],
            "invalid_tool_call": [float(r.invalid_tool_call is not None) for r in requests],
        },
    }
