"""The AwaRes crop environment as an OpenRLHF agent: ``--train.agent_func_path reward/openrlhf_agent.py``.

OpenRLHF 0.11 loads this file and builds ``AgentExecutor()`` once per vLLM engine; for each
prompt, ``execute`` runs OpenRLHF's own ``MultiTurnAgentExecutor`` loop over one ``AwaResAgent``,
with the rules of our episode (``awares_rl/rollout/runner.py``):

- the first observation is the prompt (``awares-rl data openrlhf``) with ``low_res_view`` of the
  label's image;
- turn 1 is an answer (done), a malformed call (done, ``invalid_tool_call``) or a valid
  ``GET_CROPS``: the environment returns the crops cut from the original image
  (``environment_images``) in our crops turn (``crops_turn_text``);
- turn 2 is the answer; any ``GET_CROPS`` in it is a "second-call" (done, no answer);
- a turn cut off at the token limit, or a length budget spent before turn 2, ends the episode
  without an answer.

R = w_ans * R_ans - C_tool + format is scored once, when the episode ends (``step`` returns 0):
over HTTP by our reward service when ``$AWARES_REWARD_URL`` is set (bearer token from
``$AWARES_REWARD_TOKEN``), else in process by ``score_requests`` with the ``reward:`` section of
the recipe ``$AWARES_REWARD_RECIPE`` (default: ``RewardConfig()``). ``scores`` is R_ans and
``extra_logs`` the reward parts, as in ``reward/openrlhf.py``. Other episode settings: subclass
``AgentExecutor`` and set ``settings`` (an ``EpisodeSettings``).
"""

# No ``from __future__ import annotations``: OpenRLHF execs this file without registering it in
# sys.modules, where dataclasses cannot resolve string annotations.
import asyncio
import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor
from PIL import Image

from awares_rl.core.crops import cut_crops, low_res_view
from awares_rl.core.episode import RewardParts
from awares_rl.core.images import load_image
from awares_rl.core.protocol import ToolCallError, parse_answer
from awares_rl.core.tokens import IMAGE_TOKEN, crops_turn_text
from awares_rl.rollout.runner import EpisodeSettings, parse_first_turn
from reward.client import RewardClient
from reward.config import load_reward_config
from reward.openrlhf import clean_turn, openrlhf_response, parse_agent_label
from reward.scoring import RewardRequest, score_requests

Scorer = Callable[[list[RewardRequest]], list[RewardParts]]


def _score_remote(url: str, requests: list[RewardRequest]) -> list[RewardParts]:
    with RewardClient(url) as client:
        return client.score(requests)


def scorer_from_env() -> Scorer:
    """Our reward service at ``$AWARES_REWARD_URL`` if set, else ``score_requests`` in process."""
    url = os.environ.get("AWARES_REWARD_URL")
    if url:
        return functools.partial(_score_remote, url)
    cfg = load_reward_config(os.environ.get("AWARES_REWARD_RECIPE") or None, [])
    return functools.partial(score_requests, cfg=cfg)


@dataclass
class AgentEpisode:
    """One prompt's episode: handed to ``AwaResAgent`` as its label; it records the turns."""

    image: Image.Image  # the original
    request: RewardRequest  # references, metric, needs_high_res; the rest is filled as it runs
    crops_text: Callable[[list[int]], str]  # S2 of our token layout
    max_crops: int = 9
    turns: list[str] = field(default_factory=list)
    truncated: bool = False  # the last turn hit the token limit
    done: bool = False

    def end(self, **changes: object) -> None:
        """Close the episode; ``changes`` to its RewardRequest (prediction, invalid_tool_call)."""
        self.request = dataclasses.replace(self.request, **changes)
        self.done = True

    def take_turn(self, text: str) -> list[int] | None:
        """Record a model turn; the crops to show next, or None when the episode is over."""
        self.turns.append(text)
        crops = None
        try:
            if self.truncated:  # a cut-off turn is not parsed: no answer, no call (as the runner)
                self.end()
            elif len(self.turns) > 1:
                self.end(prediction=parse_answer(text))
            elif (crops := parse_first_turn(text, self.max_crops)) is None:
                self.end(prediction=text)
            else:
                self.request = dataclasses.replace(self.request, crop_ids=crops)
        except ToolCallError as e:
            self.end(invalid_tool_call=e.reason)
        return crops


class AwaResAgent(AgentInstanceBase):
    """One episode's environment (OpenRLHF builds one per prompt, without arguments)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    async def reset(self, states: dict, **kwargs: object) -> dict:
        if not isinstance(states["label"], AgentEpisode):
            raise TypeError("AwaResAgent runs under reward.openrlhf_agent.AgentExecutor: pass "
                            "--train.agent_func_path reward/openrlhf_agent.py")
        return {"observation": states["observation"]}

    async def step(self, states: dict, **kwargs: object) -> dict:
        ep: AgentEpisode = states["label"]
        crops = ep.take_turn(clean_turn(states["action_text"]))
        return {
            "rewards": torch.tensor(0.0),  # R comes once, from AgentExecutor, at the end
            "environment_feedback": "" if crops is None else ep.crops_text(crops),
            "environment_images": None if crops is None else cut_crops(ep.image, crops),
            "done": crops is None,
        }


class _TurnRecorder:
    """The vLLM engine, noting whether each turn hit the token limit (``step`` cannot see it)."""

    def __init__(self, engine, ep: AgentEpisode) -> None:
        self.engine, self.ep = engine, ep

    async def generate(self, *args, **kwargs):
        out = await self.engine.generate(*args, **kwargs)
        self.ep.truncated = out.outputs[0].finish_reason == "length"
        return out


def start_episode(prompt: str, label: object, hf_tokenizer, settings: EpisodeSettings) -> AgentEpisode:
    """The episode of one prompt row; ValueError naming the row's problem and the fix."""
    image_path, refs, metric, needs = parse_agent_label(label)
    if not hasattr(hf_tokenizer, "image_processor"):
        raise ValueError("the AwaRes agent needs a vision-language model: OpenRLHF passed a "
                         "tokenizer without an image processor; point --actor at a VLM")
    if prompt.count(IMAGE_TOKEN) != 1:
        raise ValueError(f"the prompt of {image_path} has {prompt.count(IMAGE_TOKEN)} image tokens, "
                         "not 1 (the low-res view): build the dataset with `awares-rl data "
                         "openrlhf` and pass --data.apply_chat_template")
    tokenizer = getattr(hf_tokenizer, "tokenizer", hf_tokenizer)
    return AgentEpisode(load_image(image_path, settings.max_image_pixels),
                        RewardRequest(None, refs, metric, needs),
                        functools.partial(crops_turn_text, tokenizer), settings.max_crops)


class AgentExecutor(MultiTurnAgentExecutor):
    """What ``--train.agent_func_path`` loads: OpenRLHF's multi-turn loop over ``AwaResAgent``."""

    settings = EpisodeSettings()

    def __init__(self, scorer: Scorer | None = None) -> None:
        super().__init__(AwaResAgent)
        self.scorer = scorer or scorer_from_env()

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer,
                      llm_engine, images=None) -> dict:
        ep = await asyncio.to_thread(start_episode, prompt, label, hf_tokenizer, self.settings)
        view = low_res_view(ep.image, self.settings.low_res_scale)
        out = await super().execute(prompt, ep, sampling_params, max_length, hf_tokenizer,
                                    _TurnRecorder(llm_engine, ep), images=[view])
        if not ep.done:  # the length budget ran out before the answer turn
            ep.end()
        parts = (await asyncio.to_thread(self.scorer, [ep.request]))[0]
        logs = openrlhf_response([parts], [ep.request])["extra_logs"]
        out.update(label=label, images=images, reward=parts.total, scores=parts.answer,
                   extra_logs={k: v[0] for k, v in logs.items()})
        return out
