"""Collate chat conversations with images into one training batch (pretrain and weighted SFT).

A ``Conversation`` is a list of chat messages (any number of turns and images) plus one loss
weight per assistant message; the paper's cold-start SFT puts w = 5 on the tool-call turn and 1
elsewhere. ``collate_conversations`` renders them with the processor's chat template, lets the
processor expand each image into its visual tokens, and marks as targets exactly the tokens of each
assistant message's content plus its closing ``<|im_end|>`` (so the model learns to stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

IGNORE_INDEX = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"


@dataclass
class Conversation:
    """Chat ``messages`` whose image parts (``{"type": "image"}``) are filled, in order, by
    ``images``; ``turn_weights[k]`` weighs the k-th assistant message (default 1.0 each)."""

    messages: list[dict]
    images: list[Image.Image]
    turn_weights: list[float] | None = None

    def assistant_turns(self) -> int:
        return sum(m["role"] == "assistant" for m in self.messages)

    def image_parts(self) -> int:
        return sum(
            isinstance(m["content"], list) and sum(p.get("type") == "image" for p in m["content"])
            for m in self.messages
        )


def user_turn(question: str, n_images: int = 1) -> dict:
    """A user message with ``n_images`` image parts followed by the question."""
    content: list[dict] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": question})
    return {"role": "user", "content": content}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def vqa_conversation(image: Image.Image, question: str, answer: str) -> Conversation:
    """The plain VQA turn of the base model: one image and a question -> the answer."""
    return Conversation([user_turn(question), assistant_turn(answer)], [image])


def multi_qa_conversation(image: Image.Image, qas: Sequence[tuple[str, str]]) -> Conversation:
    """Several questions about one image, one turn each (the image only in the first turn):
    k answers for the price of one image encoding."""
    messages = []
    for k, (question, answer) in enumerate(qas):
        messages += [user_turn(question, n_images=1 if k == 0 else 0), assistant_turn(answer)]
    return Conversation(messages, [image])


def _check(conv: Conversation, i: int) -> list[float]:
    if conv.image_parts() != len(conv.images):
        raise ValueError(
            f"conversation {i}: {conv.image_parts()} image parts but {len(conv.images)} images"
        )
    n = conv.assistant_turns()
    weights = list(conv.turn_weights) if conv.turn_weights is not None else [1.0] * n
    if len(weights) != n:
        raise ValueError(
            f"conversation {i}: {len(weights)} turn_weights for {n} assistant messages"
        )
    return weights


def _find(seq: list[int], pattern: list[int], start: int) -> int:
    """Index of the first occurrence of ``pattern`` in ``seq`` at or after ``start``; -1 if none."""
    n = len(pattern)
    for j in range(start, len(seq) - n + 1):
        if seq[j : j + n] == pattern:
            return j
    return -1


def assistant_spans(ids: Sequence[int], header: list[int], end_id: int) -> list[tuple[int, int]]:
    """[start, stop) token spans of each assistant message's content plus its end-of-turn token."""
    seq, spans, pos = list(ids), [], 0
    while (j := _find(seq, header, pos)) >= 0:
        start = j + len(header)
        stop = seq.index(end_id, start) + 1 if end_id in seq[start:] else len(seq)
        spans.append((start, stop))
        pos = stop
    return spans


def collate_conversations(
    conversations: Sequence[Conversation], processor, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Tokenise a batch (right-padded) and build its targets.

    Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (B, T); ``pixel_values``
    (sum of patches, C*14*14*2) and ``image_grid_thw`` (n_images, 3) when there are images;
    ``labels`` (B, T): the token id at target positions and -100 elsewhere (aligned with
    ``input_ids``; the loss shifts); ``loss_weights`` (B, T) float: the turn weight at target
    positions, 0 elsewhere.
    """
    weights = [_check(c, i) for i, c in enumerate(conversations)]
    texts = [processor.apply_chat_template(c.messages, tokenize=False) for c in conversations]
    images = [im for c in conversations for im in c.images]
    enc = processor(
        text=texts,
        images=images or None,
        padding=True,
        padding_side="right",
        return_tensors="pt",
        return_mm_token_type_ids=True,
    )
    if max_length is not None and enc["input_ids"].shape[1] > max_length:
        raise ValueError(
            f"batch is {enc['input_ids'].shape[1]} tokens long, over max_length={max_length}; "
            "use smaller images or raise max_length (image tokens cannot be truncated)"
        )
    labels, loss_weights = _targets(enc["input_ids"], enc["attention_mask"], weights, processor)
    batch = dict(enc)
    batch["labels"], batch["loss_weights"] = labels, loss_weights
    return batch


def _targets(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, weights: list[list[float]], processor
) -> tuple[torch.Tensor, torch.Tensor]:
    tok = processor.tokenizer
    header = tok.encode(ASSISTANT_HEADER, add_special_tokens=False)
    end_id = tok.convert_tokens_to_ids(END_OF_TURN)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    loss_weights = torch.zeros(input_ids.shape, dtype=torch.float32)
    for b, row in enumerate(input_ids.tolist()):
        n_real = int(attention_mask[b].sum())
        spans = assistant_spans(row[:n_real], header, end_id)
        if len(spans) != len(weights[b]):
            raise ValueError(
                f"conversation {b}: found {len(spans)} assistant turns in the tokens, expected "
                f"{len(weights[b])} (does the chat template render '{ASSISTANT_HEADER!r}'?)"
            )
        for (start, stop), w in zip(spans, weights[b]):
            labels[b, start:stop] = input_ids[b, start:stop]
            loss_weights[b, start:stop] = w
    return labels, loss_weights


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a collated batch that the model's forward takes (drops labels and weights)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
