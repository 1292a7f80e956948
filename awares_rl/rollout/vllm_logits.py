"""A vLLM logits processor for ``SamplingConfig.ban_first`` (imports vLLM: loaded by name in vLLM's
engine process, ``LLM(logits_processors=["awares_rl.rollout.vllm_logits:BanFirst"])``).

A request whose ``SamplingParams.extra_args`` hold ids under ``vllm_engine.BAN_FIRST_KEY`` gets
them masked while it has generated nothing; every other request is left alone. vLLM returns the
raw model's logprobs (``logprobs_mode="raw_logprobs"``), so the mask changes what is sampled, not
the logprobs the learner compares with.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from awares_rl.rollout.vllm_engine import BAN_FIRST_KEY


class BanFirst(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        ids = (params.extra_args or {}).get(BAN_FIRST_KEY)
        if not ids:
            return None
        banned = list(ids)

        def ban(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if not output_ids:
                logits[banned] = -float("inf")
            return logits

        return ban
