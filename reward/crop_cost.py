"""The asymmetric crop cost C_tool and the composed reward R = w_ans * R_ans - C_tool + format.

Pure functions over plain values (paper: AwaRes, arXiv 2603.16932; defaults in reward/config.py):

    C_tool = alpha_miss                 if the sample needed high res and no crop was taken
           = alpha_use + lam * |C|      if crops C were taken (needed or not)
           = 0                          otherwise

``needs_high_res=None`` (unknown, e.g. a sample without an oracle label) counts as False: taking
crops is still charged, skipping them is free.
"""

from __future__ import annotations

from collections.abc import Sequence


def crop_cost(
    needs_high_res: bool | None,
    crop_ids: Sequence[int],
    alpha_miss: float = 0.5,
    alpha_use: float = 0.05,
    lam: float = 0.05,
) -> float:
    """C_tool >= 0 for one episode; ``|C|`` counts distinct crop ids."""
    num_crops = len(set(crop_ids))
    if num_crops:
        return alpha_use + lam * num_crops
    return alpha_miss if needs_high_res else 0.0


def format_reward(invalid_tool_call: str | None, format_penalty: float = -0.5) -> float:
    """``format_penalty`` (<= 0) when turn 1 was a malformed GET_CROPS call or turn 2 called
    again, else 0."""
    return format_penalty if invalid_tool_call is not None else 0.0


def compose_reward(answer: float, cost: float, fmt: float, w_ans: float = 1.0) -> float:
    """R = w_ans * R_ans - C_tool + format."""
    return w_ans * answer - cost + fmt
