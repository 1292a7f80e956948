"""The learner: one collate for SFT and GRPO, the rollout's exact token layout, memory-light
logprobs, the weighted SFT loss, and data-parallel LearnerWorkers (real Ray actors) that take the
same step as one worker."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from awares_rl.algo import weighted_token_nll
from awares_rl.learner.batch import (
    TokenSequence,
    collate_sequences,
    episode_to_sequence,
    model_inputs,
    trajectory_to_sequence,
)
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.forward import sequence_logprobs
from awares_rl.learner.objective import WeightedNLL
from awares_rl.learner.worker import LearnerWorker, OptimSettings, WarmupCosine
from awares_rl.models import load_processor
from awares_rl.rollout import EpisodeRunner, SamplingConfig
from awares_rl.rollout.hf_engine import HFEngine
from cluster.actor_group import init_local_ray
from tests.conftest import DIRECT_Q, TOOL_Q, episode_inputs, make_image

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
TOOL_TRAJ = {"id": "t", "question": TOOL_Q, "turns": ["GET_CROPS: ['0','4']", "red"], "crop_ids": [0, 4]}
DIRECT_TRAJ = {"id": "d", "question": DIRECT_Q, "turns": ["blue"], "crop_ids": []}
OPTIM = OptimSettings(lr=1e-3, total_steps=10, warmup_steps=1)


def sequences(processor, n: int) -> list[TokenSequence]:
    trajs = [TOOL_TRAJ, DIRECT_TRAJ] * n
    return [trajectory_to_sequence(processor, t, image=make_image(i)) for i, t in enumerate(trajs[:n])]


@pytest.fixture(scope="module")
def greedy_episodes(tool_model_dir):
    engine = HFEngine(str(tool_model_dir))
    pairs = episode_inputs()
    samples = [SimpleNamespace(id=f"s{i}", question=q, answers=["x"], metric="exact", needs_high_res=None)
               for i, (q, _) in enumerate(pairs)]
    runner = EpisodeRunner(engine, engine.processor.tokenizer)
    episodes = runner.run(samples, 1, SamplingConfig(temperature=0, max_new_tokens=16), images=[im for _, im in pairs])
    return engine.processor, episodes, [im for _, im in pairs]


def test_trajectory_tokens_equal_the_rollout(greedy_episodes):
    processor, episodes, images = greedy_episodes
    assert [ep.turn_texts for ep in episodes][:2] == [["GET_CROPS: ['0','4']", "red"], ["blue"]]
    for ep, image in zip(episodes, images):
        traj = {"id": ep.sample_id, "question": ep.question, "turns": ep.turn_texts, "crop_ids": ep.crop_ids}
        seq = trajectory_to_sequence(processor, traj, tool_turn_weight=5.0, image=image)
        assert seq.token_ids == ep.token_ids
        assert [w != 0 for w in seq.loss_weights] == [bool(m) for m in ep.action_mask]
        assert [im.size for im in seq.images] == [im.size for im in ep.images]
        assert max(seq.loss_weights) == (5.0 if ep.crop_ids else 1.0)
        grpo = episode_to_sequence(ep)
        assert grpo.token_ids == ep.token_ids and grpo.rollout_logprobs == ep.logprobs


def test_weights_mark_exactly_the_assistant_turns(tiny_dir):
    processor = load_processor(tiny_dir)
    seq = trajectory_to_sequence(processor, TOOL_TRAJ, tool_turn_weight=5.0, image=make_image(0))
    tok = processor.tokenizer

    def text(weight: float) -> str:
        return tok.decode([t for t, w in zip(seq.token_ids, seq.loss_weights) if w == weight])

    assert text(5.0) == "GET_CROPS: ['0','4']<|im_end|>"  # the tool call and its end of turn
    assert text(1.0) == "red<|im_end|>"  # the answer
    assert "<|image_pad|>" in text(0.0) and "Here are the requested crops" in text(0.0)
    batch = collate_sequences([seq, trajectory_to_sequence(processor, DIRECT_TRAJ, image=make_image(1))], processor)
    assert batch["image_grid_thw"].shape[0] == 4  # low-res view + 2 crops, then a low-res view
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # right-padded
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>"))


class FixedDistribution(torch.nn.Module):
    """A 'model' that predicts p = [1/2, 1/4, 1/8, 1/8] at every position."""

    def forward(self, input_ids, logits_to_keep, **_):
        logits = torch.tensor([0.5, 0.25, 0.125, 0.125]).log().expand(input_ids.shape[0], len(logits_to_keep), 4)
        return SimpleNamespace(logits=logits)


def test_weighted_nll_by_hand():
    # tokens [3, 0, 1, 2, 0]; weights [0, 0, 5, 5, 1]: the prompt (3, 0) is not trained, the tool
    # turn (1, 2) has w = 5, the answer (0) w = 1. nll = ln 4, ln 8, ln 2 = 2, 3, 1 (x ln 2):
    #   "weights": (5*2 + 5*3 + 1*1) ln2 / (5 + 5 + 1) = 26/11 ln2 = 1.63836
    #   "tokens":  26 ln2 / 3 = 6.00734
    batch = {"input_ids": torch.tensor([[3, 0, 1, 2, 0]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "loss_weights": torch.tensor([[0.0, 0.0, 5.0, 5.0, 1.0]])}
    for normalize, expected in (("weights", 26 / 11 * math.log(2)), ("tokens", 26 / 3 * math.log(2))):
        objective = WeightedNLL(normalize)
        logprobs = sequence_logprobs(FixedDistribution(), batch, objective.targets(batch))
        assert logprobs[0, 0] == 0.0  # the weight-0 target is never computed
        loss_sum, _ = objective(logprobs, batch)
        assert float(loss_sum) / objective.denominator(batch) == pytest.approx(expected, rel=1e-6)


def test_logprobs_loss_and_engine_agree(tool_model_dir, greedy_episodes):
    """sequence_logprobs == full-logits log_softmax; the loss == algo.weighted_token_nll; and the
    learner's logprobs of the greedy episodes == the rollout engine's (fp32, mm_token_type_ids)."""
    processor, episodes, _ = greedy_episodes
    worker = LearnerWorker(str(tool_model_dir), LearnerConfig(backend="torch", micro_batch_size=3), OPTIM)
    seqs = [episode_to_sequence(ep) for ep in episodes]
    batch = collate_sequences(seqs, processor)
    with torch.no_grad():
        logits = worker.model(**model_inputs(batch)).logits
        full = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        targets = batch["loss_weights"][:, 1:] != 0
        ours = sequence_logprobs(worker.model, batch, targets)
    assert torch.allclose(ours[targets], full[targets], atol=1e-5)
    expected, _ = weighted_token_nll(logits, batch["input_ids"], batch["loss_weights"], normalize="weights")
    assert worker.eval_loss(seqs, WeightedNLL("weights"))["loss"] == pytest.approx(float(expected), rel=1e-5)
    for ep, lp in zip(episodes, worker.eval_logprobs(seqs)):
        acted = [i for i, m in enumerate(ep.action_mask) if m]
        assert max(abs(lp[i] - ep.logprobs[i]) for i in acted) < 1e-4


def test_warmup_cosine():
    f = WarmupCosine(warmup=2, total=6, min_ratio=0.1)
    assert [round(f(s), 4) for s in range(7)] == [0.5, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1]


# ---------------------------------------------------------------- data parallel, real Ray actors
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False,
                   _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


def weights_of(worker_or_group) -> dict[str, torch.Tensor]:
    if isinstance(worker_or_group, LearnerWorker):
        return dict(worker_or_group.named_weights())
    return dict(worker_or_group.call("named_weights")[0])


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_same_training(dp_after: dict, after: dict, initial: dict) -> None:
    """Data-parallel training moved the weights as one worker did: apart by under 1% of the
    largest update (1e-3 lr x 2 Adam steps = 2e-3). Adam divides by sqrt(v), so a weight whose
    gradient is near zero moves by ~lr on float noise alone: the summation order of the ranks'
    gradients (and the CPU's kernels) sets that, not a fixed 1e-5 (1.4e-5 on an AVX-512 machine)."""
    update = max_diff(initial, after)
    assert update > 1e-3 and max_diff(dp_after, after) < 0.01 * update


def test_two_deepspeed_workers_equal_one_worker_and_resume(ray_cluster, tiny_dir, tmp_path):
    """5 sequences: 1 torch worker (1 micro-batch of 5) vs 2 DeepSpeed ZeRO-2 actors (3 + 2
    sequences in micro-batches of 2: 2 vs 1 micro-batches, the short rank pads with a zero-loss
    pass). Same parameters after 2 steps. Then resume: reload the step-1 checkpoint into the
    actors and retake step 2: the same parameters again."""
    from cluster.actor_group import ActorGroup

    seqs = sequences(load_processor(tiny_dir), 5)
    group = ActorGroup(LearnerWorker, 2, str(tiny_dir), LearnerConfig(zero_stage=2, micro_batch_size=2), OPTIM)
    single = LearnerWorker(str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=5), OPTIM)
    initial = weights_of(single)
    from awares_rl.checkpoint import TrainerState

    for step in range(2):
        m2 = group.call_split("sft_step", seqs)
        m1 = single.sft_step(seqs)
        assert m2[0]["loss"] == m2[1]["loss"] and math.isfinite(m1["loss"])  # metrics are global
        assert m2[0]["loss"] == pytest.approx(m1["loss"], rel=1e-5)
        assert m2[0]["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
        if step == 0:
            group.call("save", str(tmp_path / "step1"), TrainerState(step=1, policy_version=1))
    after, dp_after = weights_of(single), weights_of(group)
    assert_same_training(dp_after, after, initial)
    assert group.call("load_state", str(tmp_path / "step1"))[0].step == 1
    group.call_split("sft_step", seqs)
    assert max_diff(weights_of(group), dp_after) == 0.0
    group.shutdown()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_step(tiny_dir):
    """The GPU path: bf16 weights on CUDA (flash-attention 2 when installed), one SFT step."""
    from awares_rl.models.config import ModelConfig

    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    worker = LearnerWorker(str(tiny_dir), LearnerConfig(backend="torch", gpus_per_worker=1.0), OPTIM,
                           ModelConfig(dtype="bfloat16", attn_implementation=attn))
    metrics = worker.sft_step(sequences(worker.processor, 4))
    assert worker.device.type == "cuda" and math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
