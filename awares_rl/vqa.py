"""Plain VQA with the base model (no tool): greedy answers and accuracy tables (answers are scored
by the reward's one ``exact_match``).

Used to report the pretrained base model's accuracy at low and full resolution, and by the SFT
trajectory builder, which runs the base model at both resolutions exactly as the paper does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from PIL import Image

from awares_rl.learner.conversation import user_turn


@torch.no_grad()
def answer_questions(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 8,
) -> list[str]:
    """Greedy answers (one image + question each), batched with left padding."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(questions), batch_size):
        qs, ims = questions[i : i + batch_size], list(images[i : i + batch_size])
        texts = [
            processor.apply_chat_template([user_turn(q)], tokenize=False, add_generation_prompt=True)
            for q in qs
        ]
        enc = processor(
            text=texts, images=ims, padding=True, padding_side="left", return_tensors="pt",
            return_mm_token_type_ids=True,
        )
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        out.extend(processor.batch_decode(new, skip_special_tokens=True))
    return [o.strip() for o in out]


def accuracy_by_group(correct: Sequence[bool], groups: Sequence[str]) -> dict[str, dict]:
    """{"all": {...}, group: {...}} with ``accuracy`` (percent) and ``n`` per group."""
    buckets: dict[str, list[bool]] = defaultdict(list)
    for ok, g in zip(correct, groups):
        buckets["all"].append(ok)
        buckets[g].append(ok)
    return {
        g: {"accuracy": round(100.0 * sum(v) / len(v), 2), "n": len(v)}
        for g, v in sorted(buckets.items())
    }
