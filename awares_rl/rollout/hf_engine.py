"""transformers ``generate`` as a rollout engine: the reference and the fallback to vLLM."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import torch

from awares_rl.core.engine import GenOutput, GenRequest, SamplingConfig, release_memory
from awares_rl.core.tokens import (
    IMAGE_TOKEN,
    expand_image_tokens,
    forbidden_output_ids,
    image_token_counts,
)
from awares_rl.models import load_policy, load_processor


class HFEngine:
    """Batched generation with a transformers Qwen2.5-VL model (left padding, KV cache per turn).

    Turn 2 re-encodes its whole prompt: transformers' Qwen2.5-VL cannot extend a cached prefix
    with new images (its multimodal rope index is computed at prefill), so the prefix reuse that
    vLLM gets from prefix caching is not available here (bench/bench_episodes.py measures both).
    """

    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu",
                 attn_implementation: str = "sdpa", model=None, processor=None) -> None:
        self.processor = processor or load_processor(model_path)
        self.model = model or load_policy(model_path, dtype, attn_implementation)
        self.model.to(device).eval()
        self.device = device
        tok = self.processor.tokenizer
        self.image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        self.eos_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tok.pad_token_id
        self.forbidden = forbidden_output_ids(tok)
        self.version = 0

    def _batch(self, requests: list[GenRequest]) -> tuple[dict, list[list[int]]]:
        images = [im for r in requests for im in r.images]
        vision = self.processor.image_processor(images=images, return_tensors="pt") if images else {}
        counts = image_token_counts(self.processor.image_processor, images)
        prompts, k = [], 0
        for r in requests:
            prompts.append(expand_image_tokens(r.prompt_ids, self.image_token_id, counts[k:k + len(r.images)]))
            k += len(r.images)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues every row at the end
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        batch = {"input_ids": ids, "attention_mask": mask,
                 "mm_token_type_ids": (ids == self.image_token_id).long(), **vision}
        return {k: v.to(self.device) for k, v in batch.items()}, prompts

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], sampling: SamplingConfig) -> list[GenOutput]:
        if not requests:
            return []
        t0 = time.perf_counter()
        batch, prompts = self._batch(requests)
        torch.manual_seed(requests[0].seed)
        greedy = sampling.temperature == 0
        out = self.model.generate(
            **batch,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            suppress_tokens=self.forbidden,
            begin_suppress_tokens=list(sampling.ban_first) or None,  # the first new token only
            output_logits=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[:, batch["input_ids"].shape[1]:]
        logp = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new[..., None])[..., 0]
        elapsed = time.perf_counter() - t0
        results = []
        for i, prompt in enumerate(prompts):
            row = new[i].tolist()
            n = row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
            results.append(GenOutput(
                prompt_ids=prompt, token_ids=row[:n], logprobs=logp[i, :n].tolist(),
                finish_reason="stop" if row[n - 1] == self.eos_id else "length",
                timings={"generate_s": elapsed},
            ))
        return results

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy tensors named as in a checkpoint (``model.layers.*``, ``visual.*``: what the learner
        sends and vLLM takes) or as the module's own parameters into the model, one at a time (a
        stream of object-store buckets is never held whole); a subset updates only those."""
        from awares_rl.checkpoint import checkpoint_to_module_names

        params = dict(self.model.named_parameters())
        to_module = checkpoint_to_module_names(self.model)
        for name, tensor in named_tensors:
            if name not in params and name not in to_module:
                raise KeyError(f"unknown parameter names [{name!r}] in weight update (policy version "
                               f"{version}): not a parameter of {type(self.model).__name__}")
            target = params[name] if name in params else params[to_module[name]]
            target.copy_(tensor.to(target.dtype))
        self.version = version

    def load_checkpoint(self, model_dir: str | Path, version: int) -> None:
        from awares_rl.checkpoint import checkpoint_tensors

        self.load_weights(checkpoint_tensors(model_dir), version)

    def close(self) -> None:
        """Drop the model and hand its memory back (``release_memory``)."""
        self.model = None
        release_memory()
