"""Next-token log-probabilities of a collated batch, computed only where they are needed.

The vocabulary projection is the memory peak of a VLM forward (B x T x V logits; T is mostly
image tokens, V ~152k for Qwen2.5-VL). Losses only need the logprobs of trained tokens, so the
model is asked for logits at the union of those positions only (``logits_to_keep`` as an index
tensor), and the log-softmax normaliser is taken one sequence at a time in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from awares_rl.learner.batch import MODEL_KEYS, model_inputs
from awares_rl.learner.prefix import shared_prefix_logits


def distinct_image_features(model, batch: Mapping[str, torch.Tensor]):
    """The vision encoder's output for every image of a ``dedupe_images`` batch from one pass
    over its distinct images: their embeddings (and Qwen3-VL's deepstack features) repeated per
    ``image_index``, so gradients from every use add up on the one pass."""
    hf = getattr(model, "module", model)  # a DeepSpeed engine wraps the transformers model
    out = hf.model.get_image_features(batch["pixel_values"], batch["distinct_grid_thw"], return_dict=True)
    index = batch["image_index"].tolist()
    out.pooler_output = tuple(out.pooler_output[i] for i in index)
    if getattr(out, "deepstack_features", None) is not None:
        out.deepstack_features = [tuple(f[i] for i in index) for f in out.deepstack_features]
    return out


def model_forward(model, batch: Mapping[str, torch.Tensor], **kwargs):
    """``model``'s forward on a collated batch; a ``dedupe_images`` batch (``image_index``) runs
    the vision tower once per distinct image (``distinct_image_features``)."""
    if "image_index" not in batch:
        return model(**model_inputs(batch), **kwargs)
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch and k != "pixel_values"}
    return model(**inputs, mm_encoder_outputs={"image": distinct_image_features(model, batch)}, **kwargs)


def default_targets(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, T-1) bool: every real (non-padding) next token."""
    return batch["attention_mask"][:, 1:].bool()


def sequence_logprobs(
    model, batch: Mapping[str, torch.Tensor], targets: torch.Tensor | None = None, share_prefix: bool = False
) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1], images)``, shape (B, T-1), float32.

    ``targets`` (B, T-1) bool selects the positions to compute (default: all real tokens); the
    others are 0. ``mm_token_type_ids`` from the batch is passed to the model (Qwen2.5-VL's
    multimodal rope needs it to place the tokens after an image). ``model`` may be a transformers
    model or a wrapper that forwards keyword arguments to it (a DeepSpeed engine).
    ``share_prefix`` (a ``dedupe_images`` batch): rows that share their prompt run it once
    (``awares_rl.learner.prefix``); same logprobs.
    """
    ids = batch["input_ids"]
    if targets is None:
        targets = default_targets(batch)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=ids.device)
    keep = targets.any(0).nonzero().squeeze(-1)  # positions t whose logits are needed
    if keep.numel() == 0:
        return out
    if share_prefix and "image_index" in batch:
        hf = getattr(model, "module", model)
        features = distinct_image_features(model, batch)
        parts = shared_prefix_logits(model, batch, targets, features, hf.config.image_token_id)
    else:
        parts = [(tuple(range(ids.shape[0])), keep,
                  model_forward(model, batch, use_cache=False, logits_to_keep=keep).logits)]  # (B, K, V)
    for rows, t, logits in parts:
        if t.numel() == 0:
            continue
        r = torch.tensor(rows, device=ids.device)
        picked = logits.gather(-1, ids[r][:, t + 1].unsqueeze(-1)).squeeze(-1).float()
        lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
        out[r.unsqueeze(1), t.unsqueeze(0)] = torch.where(targets[r][:, t], picked - lse, 0.0)
    return out
