"""EpisodeRunner: a batch of samples x G -> turn 1 on the low-res view -> parse GET_CROPS ->
crops from the original image -> turn 2 -> typed Episodes. Batched across samples and turns.
With ``max_turns=1`` (no crop tool) turn 1 is the answer and any call is invalid ("tools-off").

The last turn offers no tool (``answer_last_turn``, OpenAI's ``tool_choice="none"``): its first
token may not open a GET_CROPS call, so a policy that has used its one call answers instead of
calling again. A second call can never be served, and the format penalty it drew in GRPO also hit
the valid first call of the same episode (one advantage for all its tokens): GRPO then unlearned
cropping (README)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from awares_rl.core.crops import LOW_RES_SCALE, cut_crops, low_res_view, retained_token_ratio
from awares_rl.core.engine import Engine, GenOutput, GenRequest, SamplingConfig
from awares_rl.core.episode import Episode
from awares_rl.core.images import DEFAULT_MAX_PIXELS, ImageError, check_image, load_image
from awares_rl.core.prompts import sample_question
from awares_rl.core.protocol import ToolCallError, parse_answer, parse_tool_call
from awares_rl.core.tokens import IMAGE_TOKEN, crops_turn_ids, first_turn_ids, tool_call_open_ids


@dataclass(frozen=True)
class EpisodeSettings:
    """What shapes an episode (the runner's part of the rollout config)."""

    low_res_scale: float = LOW_RES_SCALE
    max_crops: int = 9  # a call naming more crops is invalid ("too-many")
    system_prompt: str | None = None  # None: protocol.SYSTEM_PROMPT
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # data.max_image_pixels: larger images are refused
    max_turns: int = 2  # rollout.max_turns: 1 = no crop tool, turn 1 is the answer
    answer_last_turn: bool = True  # rollout.answer_last_turn: the last turn may not open a tool call

    @classmethod
    def from_rollout(cls, rollout, max_image_pixels: int = DEFAULT_MAX_PIXELS) -> EpisodeSettings:
        """The settings of a recipe's ``rollout`` section (rollout workers, eval, ``episodes``)."""
        return cls(rollout.low_res_scale, rollout.max_crops, max_image_pixels=max_image_pixels,
                   max_turns=rollout.max_turns, answer_last_turn=rollout.answer_last_turn)


def parse_first_turn(text: str, max_crops: int = 9, max_turns: int = 2) -> list[int] | None:
    """Turn 1's crop ids (None: a direct answer); ToolCallError for a malformed call, one naming
    more than ``max_crops`` crops ("too-many"), or any call when ``max_turns`` is 1 ("tools-off")."""
    crops = parse_tool_call(text)
    if crops is not None and max_turns == 1:
        raise ToolCallError("tools-off", text, "rollout.max_turns=1: turn 1 must answer")
    if crops is not None and len(crops) > max_crops:
        raise ToolCallError("too-many", text, f"{len(crops)} crops > max_crops={max_crops}")
    return crops


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


class EpisodeRunner:
    """Runs 2-turn AwaRes episodes on any ``Engine``."""

    def __init__(self, engine: Engine, tokenizer, settings: EpisodeSettings | None = None) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.settings = settings or EpisodeSettings()
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.call_open_ids = tool_call_open_ids(tokenizer) if self.settings.answer_last_turn else ()

    def _turn_sampling(self, sampling: SamplingConfig, turn: int) -> SamplingConfig:
        """``sampling`` for turn ``turn`` (1-based): on the last turn, no tool call may open."""
        last = turn == self.settings.max_turns
        return replace(sampling, ban_first=self.call_open_ids) if last and self.call_open_ids else sampling

    def _new_episode(self, sample, image_size, g: int) -> Episode:
        return Episode(
            sample_id=sample.id, question=sample.question, answers=list(sample.answers),
            metric=sample.metric or "exact", image_size=image_size,
            needs_high_res=sample.needs_high_res, group_index=g, policy_version=self.engine.version,
        )

    def _load(self, samples, images, root) -> list[Image.Image | ImageError]:
        if images is not None:
            out: list[Image.Image | ImageError] = []
            for s, im in zip(samples, images, strict=True):
                try:
                    out.append(check_image(im.convert("RGB") if im.mode != "RGB" else im, s.id))
                except ImageError as e:
                    out.append(e)
            return out
        if root is None:
            raise ValueError("EpisodeRunner.run needs images= or root= (the folder of the JSONL file)")
        loaded: list[Image.Image | ImageError] = []
        for s in samples:
            try:
                loaded.append(load_image(Path(root) / s.image, self.settings.max_image_pixels))
            except ImageError as e:
                loaded.append(e)
        return loaded

    def run(self, samples: Sequence, group_size: int, sampling: SamplingConfig, seed: int = 0,
            images: Sequence[Image.Image] | None = None, root: str | Path | None = None) -> list[Episode]:
        """G episodes per sample, group-contiguous (sample 0's G episodes first).

        A sample whose image cannot be used yields G episodes flagged with ``error`` (never a
        silent drop); a malformed tool call in turn 1, or any tool call in turn 2 ("second-call"),
        ends its episode without an answer and with ``invalid_tool_call`` set; a turn cut off at
        ``max_new_tokens`` ends it with ``truncated``. With ``answer_last_turn`` the last turn cannot
        start a call (one that starts otherwise and calls later is still "second-call").
        """
        t0 = time.perf_counter()
        loaded = self._load(samples, images, root)
        episodes, firsts, views = [], [], {}
        for i, (sample, image) in enumerate(zip(samples, loaded)):
            size = image.size if isinstance(image, Image.Image) else (0, 0)
            if isinstance(image, Image.Image):  # one view and one prompt per sample, shared by its G episodes
                views[i] = (image, low_res_view(image, self.settings.low_res_scale), {})
                prompt = first_turn_ids(self.tokenizer, sample_question(sample), self.settings.system_prompt)
            for g in range(group_size):
                ep = self._new_episode(sample, size, g)
                episodes.append(ep)
                if isinstance(image, ImageError):
                    ep.error = str(image)
                    continue
                firsts.append((ep, i, GenRequest(list(prompt), [views[i][1]], seed=seed + len(episodes) - 1)))
        outs1 = self.engine.generate([r for _, _, r in firsts], self._turn_sampling(sampling, 1))
        t1 = time.perf_counter()
        seconds = []
        for (ep, i, req), out in zip(firsts, outs1):
            follow = self._after_turn1(ep, views[i], req, out)
            if follow is not None:
                seconds.append((ep, follow))
        outs2 = self.engine.generate([r for _, r in seconds], self._turn_sampling(sampling, 2))
        for (ep, _), out2 in zip(seconds, outs2):
            self._after_turn2(ep, out2)
        t2 = time.perf_counter()
        for ep in episodes:
            ep.timings.update(turn1_s=t1 - t0, turn2_s=t2 - t1, total_s=t2 - t0)
            ep.check()
        return episodes

    def _finish(self, ep: Episode, low: Image.Image, text: str | None) -> None:
        ep.final_answer = text
        ep.visual_tokens = ep.token_ids.count(self.image_token_id)
        w, h = ep.image_size
        ep.rtr = retained_token_ratio(w, h, ep.crop_ids, low.size)

    def _after_turn1(self, ep: Episode, views, req: GenRequest, out: GenOutput) -> GenRequest | None:
        image, low, crops_cut = views  # crops_cut: crop id -> the crop, shared by the sample's episodes
        text = _decode(self.tokenizer, out.token_ids)
        ep.turn_texts.append(text)
        ep.token_ids = out.prompt_ids + out.token_ids
        ep.action_mask = [0] * len(out.prompt_ids) + [1] * len(out.token_ids)
        ep.logprobs = [0.0] * len(out.prompt_ids) + list(out.logprobs)
        ep.images = [low]
        if out.finish_reason == "length":
            ep.truncated = True
            self._finish(ep, low, None)
            return None
        try:
            crops = parse_first_turn(text, self.settings.max_crops, self.settings.max_turns)
        except ToolCallError as e:
            ep.invalid_tool_call = e.reason
            self._finish(ep, low, None)
            return None
        if crops is None:
            self._finish(ep, low, text)
            return None
        ep.crop_ids = crops
        for c in crops:
            if c not in crops_cut:
                crops_cut[c] = cut_crops(image, [c])[0]
        ep.images = [low, *(crops_cut[c] for c in crops)]
        prompt = req.prompt_ids + out.token_ids + crops_turn_ids(self.tokenizer, crops)
        return GenRequest(prompt, ep.images, seed=req.seed)

    def _after_turn2(self, ep: Episode, out2: GenOutput) -> None:
        text = _decode(self.tokenizer, out2.token_ids)
        ep.turn_texts.append(text)
        start = len(ep.token_ids)  # turn-2 prompt extends turn 1 token for token
        if out2.prompt_ids[:start] != ep.token_ids:
            raise RuntimeError(f"episode {ep.sample_id}: turn-2 prompt does not extend turn 1")
        ep.token_ids = out2.prompt_ids + out2.token_ids
        n_new = len(out2.prompt_ids) - start
        ep.action_mask += [0] * n_new + [1] * len(out2.token_ids)
        ep.logprobs += [0.0] * n_new + list(out2.logprobs)
        ep.truncated = out2.finish_reason == "length"
        answer = None
        if not ep.truncated:
            try:
                answer = parse_answer(text)
            except ToolCallError as e:  # a second call: penalised like a malformed one, not scored
                ep.invalid_tool_call = e.reason
        self._finish(ep, ep.images[0], answer)
