"""Cold-start SFT loss of AwaRes: token NLL, weight w = 5 on the tool-call turn, 1 elsewhere.

Paper: "Look Where It Matters: High-Resolution Crops Retrieval for Efficient VLMs" (AwaRes,
arXiv 2603.16932), the weighted cold-start SFT that precedes GRPO.
"""

from __future__ import annotations

import torch

from awares_rl.algo.utils import check_same_shape, token_logprobs

IGNORE_INDEX = -100
NORMALIZATIONS = ("weights", "tokens")


def weighted_token_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    normalize: str = "weights",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted next-token NLL; returns ``(loss, stats)``.

    ``logits`` (B, T, V); ``labels`` and ``weights`` (B, T) aligned with ``input_ids``. The
    function shifts like Hugging Face: the logits at t predict ``labels[:, t + 1]``, weighted
    by ``weights[:, t + 1]`` (so weights mark the target tokens, e.g. 5.0 on every token of
    the ``GET_CROPS`` turn). S = targets whose label is not -100 and whose weight is not 0::

        normalize="weights":  L = sum_S w_t * nll_t / sum_S w_t    (default)
        normalize="tokens":   L = sum_S w_t * nll_t / |S|

    "weights" is a weighted mean: w sets the tool-call turn's share of the gradient, not the
    learning rate, so a batch without tool calls trains at the same scale as plain SFT. "tokens"
    multiplies the whole loss by the batch's mean weight instead. Weights must be >= 0. With S
    empty the loss is 0 (with grad). ``stats`` (detached): nll (unweighted mean over S),
    tokens (|S|), weight_sum.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {list(NORMALIZATIONS)}")
    check_same_shape(labels=labels, weights=weights)
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be (B, T, V) matching labels (B, T); got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    targets, w = labels[:, 1:], weights[:, 1:].float()
    in_s = (targets != IGNORE_INDEX) & (w != 0)
    nll = -token_logprobs(logits, labels.clamp_min(0))  # -100 -> 0, a valid id; masked below
    nll = torch.where(in_s, nll, 0.0)
    w = torch.where(in_s, w, 0.0)
    count = in_s.sum()
    denom = w.sum() if normalize == "weights" else count.float()
    loss = (w * nll).sum() / torch.where(denom != 0, denom, 1.0)  # empty S: 0 / 1
    stats = {
        "nll": (nll.sum() / count.clamp_min(1)).detach(),
        "tokens": count.detach(),
        "weight_sum": w.sum().detach(),
    }
    return loss, stats
