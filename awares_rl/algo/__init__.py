"""RL and SFT math for AwaRes: pure torch functions over (B, T) tensors, variants from registries.

- ``group_advantages``: GRPO / Dr. GRPO group-relative advantages (``ADVANTAGE_SCALES``);
  ``informative_groups``: the groups whose rewards differ (DAPO's dynamic sampling).
- ``kl_penalty``, ``kl_in_reward``: Schulman's k1/k2/k3 KL estimators (``KL_ESTIMATORS``).
- ``policy_loss``, ``aggregate``: PPO-clip with low/high clip, KL to the reference, truncated
  importance sampling; token-mean / seq-mean-token-mean / dr-grpo (``AGGREGATIONS``).
- ``weighted_token_nll``: the cold-start SFT loss (w = 5 on the tool-call turn).
- ``token_logprobs``, ``entropy_from_logits``, ``masked_mean``: shared helpers.

Shift convention: per-token tensors align with ``input_ids``; logits at t predict token t + 1.
"""

from awares_rl.algo.advantages import ADVANTAGE_SCALES, group_advantages, informative_groups
from awares_rl.algo.kl import KL_ESTIMATORS, kl_in_reward, kl_penalty
from awares_rl.algo.losses import AGGREGATIONS, aggregate, policy_loss
from awares_rl.algo.sft import IGNORE_INDEX, weighted_token_nll
from awares_rl.algo.utils import entropy_from_logits, masked_mean, token_logprobs

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "IGNORE_INDEX",
    "KL_ESTIMATORS",
    "aggregate",
    "entropy_from_logits",
    "group_advantages",
    "informative_groups",
    "kl_in_reward",
    "kl_penalty",
    "masked_mean",
    "policy_loss",
    "token_logprobs",
    "weighted_token_nll",
]
