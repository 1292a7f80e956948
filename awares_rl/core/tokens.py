"""Token layout of the 2-turn AwaRes conversation, shared by rollout, SFT and the learner.

Prompts are built as *compact* ids: one ``<|image_pad|>`` per image, which the engine (vLLM's
multimodal processor, or ``expand_image_tokens`` for transformers) expands to one pad per visual
token. The whole conversation is laid out as

    P1 = chat(system, user[image, question]) + "<|im_start|>assistant\\n"
    G1 = turn-1 output ids, ending in <|im_end|>
    S2 = "\\n" + chat(user[crop images, intro]) + "<|im_start|>assistant\\n"   (after a tool call)
    G2 = turn-2 output ids

so turn 2's prompt P1 + G1 + S2 extends turn 1's token for token (engines reuse its prefix), and
SFT trains on exactly the ids the policy produces at rollout.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from awares_rl.core.protocol import crops_user_message, first_turn_messages, format_tool_call

IMAGE_TOKEN = "<|image_pad|>"
END_TOKEN = "<|im_end|>"
# Never valid in a policy's output: an image pad without an image breaks the episode's layout.
# Engines mask them at sampling time; logprobs stay those of the raw model (as the learner's).
FORBIDDEN_OUTPUT_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")


def forbidden_output_ids(tokenizer) -> list[int]:
    """Ids of FORBIDDEN_OUTPUT_TOKENS that the tokenizer knows."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in FORBIDDEN_OUTPUT_TOKENS]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def tool_call_open_ids(tokenizer) -> tuple[int, ...]:
    """The token a GET_CROPS call opens with, as the policy writes it (the first id of
    ``format_tool_call``'s text): masked at the start of the last turn, where no tool is offered."""
    return (_ids(tokenizer, format_tool_call([0]))[0],)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def first_turn_ids(tokenizer, question: str, system_prompt: str | None = None) -> list[int]:
    """P1: system + user(low-res image, question) + assistant header (compact image token)."""
    msgs = first_turn_messages(question) if system_prompt is None else first_turn_messages(question, system_prompt)
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return _ids(tokenizer, text)


def crops_turn_text(tokenizer, crop_ids: Sequence[int]) -> str:
    """S2 as text (compact image tokens): the newline closing turn 1, the crops user turn and the
    assistant header."""
    text = tokenizer.apply_chat_template(
        [crops_user_message(crop_ids)], add_generation_prompt=True, tokenize=False
    )
    return "\n" + text


def crops_turn_ids(tokenizer, crop_ids: Sequence[int]) -> list[int]:
    """S2: ``crops_turn_text`` as ids."""
    return _ids(tokenizer, crops_turn_text(tokenizer, crop_ids))


def assistant_ids(tokenizer, text: str) -> list[int]:
    """Ids of an assistant turn as the policy emits it: the text, then <|im_end|>."""
    return _ids(tokenizer, text) + [tokenizer.convert_tokens_to_ids(END_TOKEN)]


def image_token_counts(image_processor, images: Sequence[Image.Image]) -> list[int]:
    """Visual tokens the processor produces for each image (patches / merge_size**2)."""
    merge = image_processor.merge_size**2
    out = []
    for im in images:
        patches = image_processor.get_number_of_image_patches(im.height, im.width, {})
        out.append(patches // merge)
    return out


def expand_image_tokens(ids: Sequence[int], image_token_id: int, counts: Sequence[int]) -> list[int]:
    """Replace the i-th compact image token by ``counts[i]`` copies (as the processor does)."""
    out: list[int] = []
    it = iter(counts)
    for t in ids:
        if t == image_token_id:
            try:
                out.extend([t] * next(it))
            except StopIteration:
                raise ValueError(f"prompt has more image tokens than images ({len(counts)})") from None
        else:
            out.append(t)
    if next(it, None) is not None:
        raise ValueError(f"prompt has fewer image tokens than images ({len(counts)})")
    return out


def compact_image_tokens(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Inverse of ``expand_image_tokens``: collapse each run of image pads to one token."""
    return [t for i, t in enumerate(ids) if t != image_token_id or i == 0 or ids[i - 1] != t]
