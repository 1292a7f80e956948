"""Shared-prefix forward: a GRPO group's G episodes share their whole first-turn prompt (system
prompt, low-res view, question), and it is most of each sequence (~190 of ~195 tokens for a
direct answer in the tiny recipe). Run it once per group, not G times: one forward over the
prompt (``use_cache``), its KV cache repeated G times, then one forward over the G actions (and
crops turns) on top of it. Same math as the padded batch (``tests/test_shared_prefix.py``:
logprobs and gradients equal to 1e-5); gradients from the G continuations add up on the one
prompt pass, as they do on the one vision pass of a ``dedupe_images`` batch.

Plan (``prefix_plan``): rows whose tokens before their first target are identical (same ids,
same images) form a group; its continuations run in one pass per number of images after the
prompt (direct answers apart from crop episodes: little padding); a row alone runs with the
other lone rows in one plain pass.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from awares_rl.learner.batch import image_spans


@dataclass(frozen=True)
class Pass:
    """One model call over ``rows`` of the batch, token positions [start, end); ``prefix_of``:
    the rows that continue this (one-row) prefix pass, from its KV cache; ``after``: the row
    whose prefix pass a continuation pass continues (-1: none)."""

    rows: tuple[int, ...]
    start: int
    end: int
    prefix_of: tuple[int, ...] = ()
    after: int = -1


def image_runs(ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int, int]]:
    """(row, start, end) of every run of image pads, row-major: the order of a batch's images."""
    return [(r, s, e) for r, row in enumerate(ids.tolist()) for s, e in image_spans(row, image_token_id)]


def prefix_plan(ids: torch.Tensor, lengths: list[int], targets: torch.Tensor, runs: list[tuple[int, int, int]],
                image_index: list[int]) -> list[Pass]:
    """The passes of a batch: per group of >= 2 rows sharing the tokens (and images) before their
    first target, a prefix pass (its first row) and a continuation pass per number of images
    after the prompt (``after``: that first row); the other rows in one plain pass. A row with no
    target, or an image run across the cut, is a lone row."""
    first = targets.float().argmax(1).tolist()  # logit position of the first target
    keys: dict[tuple, list[int]] = {}
    lone = []
    for r in range(ids.shape[0]):
        cut = first[r] + 1  # tokens [0, cut) are the shared prompt: logit cut-1 predicts token cut
        own = [(s, e) for (rr, s, e) in runs if rr == r]
        if not bool(targets[r].any()) or any(s < cut < e for s, e in own):
            lone.append(r)
            continue
        images = tuple(image_index[k] for k, (rr, s, _) in enumerate(runs) if rr == r and s < cut)
        keys.setdefault((cut, tuple(ids[r, :cut].tolist()), images), []).append(r)
    passes = []
    for (cut, _, _), rows in keys.items():
        if len(rows) == 1:
            lone += rows
            continue
        passes.append(Pass((rows[0],), 0, cut, prefix_of=tuple(rows)))
        shapes: dict[int, list[int]] = {}  # images after the prompt -> rows
        for r in rows:
            shapes.setdefault(sum(1 for (rr, s, _) in runs if rr == r and s >= cut), []).append(r)
        for part in shapes.values():
            passes.append(Pass(tuple(part), cut, max(lengths[r] for r in part), after=rows[0]))
    if lone:
        lone.sort()
        passes.append(Pass(tuple(lone), 0, max(lengths[r] for r in lone)))
    return passes


def _select_images(features, runs: list[tuple[int, int, int]], p: Pass):
    """``features`` (one entry per image of the batch) cut to the images inside pass ``p``, in
    the order its rows and positions place them; None when there are none."""
    order = {r: i for i, r in enumerate(p.rows)}
    picked = sorted((order[r], s, k) for k, (r, s, _) in enumerate(runs) if r in order and p.start <= s < p.end)
    if not picked:
        return None, None
    index = [k for _, _, k in picked]
    out = copy.copy(features)
    out.pooler_output = tuple(features.pooler_output[k] for k in index)
    if getattr(features, "deepstack_features", None) is not None:
        out.deepstack_features = [tuple(f[k] for k in index) for f in features.deepstack_features]
    return out, index


def _repeated(cache, n: int):
    """A new cache holding ``n`` copies of the one-row ``cache`` (which stays as it is, for the
    prefix's other continuation passes); gradients flow back to its tensors."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_repeat_interleave(n)  # each copied layer takes new, repeated tensors
    return out


def shared_prefix_logits(model, batch: Mapping[str, torch.Tensor], targets: torch.Tensor, features,
                         image_token_id: int) -> list[tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]:
    """Logits of the target positions of a ``dedupe_images`` batch through ``prefix_plan``'s
    passes: per pass, (rows, logit positions t, logits (len(rows), len(t), V)). ``features``: the
    vision tower's output per image of the batch (``distinct_image_features``)."""
    from awares_rl.models.family import family_of

    hf = getattr(model, "module", model)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    runs = image_runs(ids, image_token_id)
    lengths = mask.sum(1).tolist()
    positions = family_of(hf).rope_positions(hf, batch)  # (3, B, T): the full sequences' M-RoPE
    plan = prefix_plan(ids, lengths, targets, runs, batch["image_index"].tolist())
    out, caches = [], {}  # the one-row KV cache of each prefix pass, by its row
    grids = batch.get("image_grid_thw")
    for p in plan:
        rows = torch.tensor(p.rows)
        keep = targets[rows, p.start:p.end - (0 if p.prefix_of else 1)].any(0).nonzero().squeeze(-1)
        if p.prefix_of:  # the last prompt position predicts every row's first target
            keep = torch.tensor([p.end - 1 - p.start])
        images, index = _select_images(features, runs, p)
        kwargs = {"mm_encoder_outputs": {"image": images}, "image_grid_thw": grids[index]} if images else {}
        cache = _repeated(caches[p.after], len(p.rows)) if p.after >= 0 else None
        span = torch.ones(len(p.rows), p.start, dtype=mask.dtype) if cache is not None else mask[rows, :0]
        res = model(input_ids=ids[rows, p.start:p.end],
                    attention_mask=torch.cat([span.to(mask.device), mask[rows, p.start:p.end]], 1),
                    position_ids=positions[:, rows, p.start:p.end],
                    mm_token_type_ids=batch["mm_token_type_ids"][rows, p.start:p.end],
                    past_key_values=cache, use_cache=bool(p.prefix_of), logits_to_keep=keep.to(ids.device),
                    **kwargs)
        if p.prefix_of:
            caches[p.rows[0]] = res.past_key_values
            logits = res.logits.expand(len(p.prefix_of), -1, -1)
            out.append((p.prefix_of, keep + p.start, logits))
        else:
            out.append((p.rows, keep + p.start, res.logits))
    return out
