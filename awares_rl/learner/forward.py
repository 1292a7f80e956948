"""Next-token log-probabilities of a collated batch, computed only where they are needed.

The vocabulary projection is the memory peak of a VLM forward (B x T x V logits; T is mostly
image tokens, V ~152k for Qwen2.5-VL). Losses only need the logprobs of trained tokens, so the
model is asked for logits at the union of those positions only (``logits_to_keep`` as an index
tensor), and the log-softmax normaliser is taken one sequence at a time in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from awares_rl.learner.batch import model_inputs


def default_targets(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, T-1) bool: every real (non-padding) next token."""
    return batch["attention_mask"][:, 1:].bool()


def sequence_logprobs(
    model, batch: Mapping[str, torch.Tensor], targets: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1], images)``, shape (B, T-1), float32.

    ``targets`` (B, T-1) bool selects the positions to compute (default: all real tokens); the
    others are 0. ``mm_token_type_ids`` from the batch is passed to the model (Qwen2.5-VL's
    multimodal rope needs it to place the tokens after an image). ``model`` may be a transformers
    model or a wrapper that forwards keyword arguments to it (a DeepSpeed engine).
    """
    ids = batch["input_ids"]
    if targets is None:
        targets = default_targets(batch)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=ids.device)
    keep = targets.any(0).nonzero().squeeze(-1)  # positions t whose logits are needed
    if keep.numel() == 0:
        return out
    logits = model(**model_inputs(batch), use_cache=False, logits_to_keep=keep).logits  # (B, K, V)
    picked = logits.gather(-1, ids[:, keep + 1].unsqueeze(-1)).squeeze(-1).float()
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    out[:, keep] = torch.where(targets[:, keep], picked - lse, 0.0)
    return out
