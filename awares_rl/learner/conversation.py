"""Chat conversations with images as training sequences (pretrain and weighted SFT).

A ``Conversation`` is a list of chat messages (any number of turns and images) plus one loss
weight per assistant message; the paper's cold-start SFT puts w = 5 on the tool-call turn and 1
elsewhere. ``conversation_to_sequence`` renders one with the processor's chat template into a
``TokenSequence`` (image pads expanded, weights on exactly the tokens of each assistant message's
content plus its closing ``<|im_end|>``, so the model learns to stop), which
``awares_rl.learner.batch.collate_sequences`` batches like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from awares_rl.core.tokens import END_TOKEN, IMAGE_TOKEN, expand_image_tokens, image_token_counts
from awares_rl.learner.batch import TokenSequence

ASSISTANT_HEADER = "<|im_start|>assistant\n"


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


def _check(conv: Conversation) -> list[float]:
    """The turn weights of ``conv``; ValueError when its images or weights do not fit its messages."""
    if conv.image_parts() != len(conv.images):
        raise ValueError(f"conversation: {conv.image_parts()} image parts but {len(conv.images)} images")
    n = conv.assistant_turns()
    weights = list(conv.turn_weights) if conv.turn_weights is not None else [1.0] * n
    if len(weights) != n:
        raise ValueError(f"conversation: {len(weights)} turn_weights for {n} assistant messages")
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


def conversation_to_sequence(conv: Conversation, processor) -> TokenSequence:
    """``conv`` rendered with the processor's chat template as a ``TokenSequence``: the text's ids
    with each image pad expanded to its image's visual tokens, and each assistant message's
    weight on its content and closing ``<|im_end|>`` (0 elsewhere)."""
    weights = _check(conv)
    tok = processor.tokenizer
    text = processor.apply_chat_template(conv.messages, tokenize=False)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    counts = image_token_counts(processor.image_processor, conv.images)
    ids = expand_image_tokens(tok(text, add_special_tokens=False)["input_ids"], image_id, counts)
    header = tok.encode(ASSISTANT_HEADER, add_special_tokens=False)
    spans = assistant_spans(ids, header, tok.convert_tokens_to_ids(END_TOKEN))
    if len(spans) != len(weights):
        raise ValueError(
            f"found {len(spans)} assistant turns in the tokens, expected {len(weights)} "
            f"(does the chat template render {ASSISTANT_HEADER!r}?)"
        )
    loss_weights = [0.0] * len(ids)
    for (start, stop), w in zip(spans, weights):
        loss_weights[start:stop] = [float(w)] * (stop - start)
    return TokenSequence(ids, list(conv.images), loss_weights)
