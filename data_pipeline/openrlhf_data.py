"""Sample JSONL -> OpenRLHF's prompt dataset for the AwaRes agent (``awares-rl data openrlhf``).

One JSON object a line: ``{"input": [system, user], "label": agent_label}``. ``input`` is turn 1 of
our episode (``protocol.first_turn_messages``) in OpenRLHF's string form, the image written as
``<image>`` (OpenRLHF's ``--data.apply_chat_template`` turns it back into an image part), so the
prompt OpenRLHF renders is our ``first_turn_ids`` token for token. The label
(``reward.openrlhf.agent_label``) carries the image path, the answers, the metric and
``needs_high_res``; the agent makes the low-res view from that image, so there is no image column.
"""

from __future__ import annotations

import json
from pathlib import Path

from awares_rl.core.prompts import sample_question
from awares_rl.core.protocol import first_turn_messages
from awares_rl.core.sample import Sample, SampleError
from data_pipeline.datasets import ConvertReport, read_samples
from reward.openrlhf import agent_label

IMAGE_TAG = "<image>"  # OpenRLHF's image marker in string contents (datasets/prompts_dataset.py)


def _as_string(content: list[dict], where: str) -> str:
    for part in content:
        if part["type"] == "text" and IMAGE_TAG in part["text"]:
            raise SampleError(where, "question", f"contains {IMAGE_TAG!r}, which OpenRLHF reads as "
                              "an image; reword the question")
    return "".join(IMAGE_TAG if part["type"] == "image" else part["text"] for part in content)


def prompt_record(sample: Sample, jsonl_path: str | Path, system_prompt: str | None = None) -> dict:
    """The OpenRLHF prompt row of ``sample`` (listed in ``jsonl_path``)."""
    question = sample_question(sample)  # with the benchmark's answer prompt, as our rollout asks it
    msgs = first_turn_messages(question) if system_prompt is None else first_turn_messages(question, system_prompt)
    where = f"{jsonl_path}: sample {sample.id!r}"
    inputs = [{"role": m["role"], "content": _as_string(m["content"], where)} for m in msgs]
    return {"input": inputs, "label": agent_label(sample, jsonl_path)}


def write_prompt_dataset(
    src: str | Path, out: str | Path, system_prompt: str | None = None, on_error: str = "fail"
) -> ConvertReport:
    """Convert the Sample JSONL ``src`` (its images checked) to OpenRLHF rows in ``out``."""
    samples, report = read_samples(src, on_error)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    rows = [json.dumps(prompt_record(s, src, system_prompt), ensure_ascii=False) for s in samples]
    tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    report.path, report.written = out, len(rows)
    return report
