"""Checkpoints load in transformers as-is, and resuming takes exactly the step an uninterrupted
run takes (weights, optimizer, LR schedule, RNG, data position)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from awares_rl import checkpoint as ckpt
from awares_rl.config import load_recipe
from awares_rl.core.config_io import ConfigError
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_processor
from awares_rl.sft import SFTTrainer
from cluster.actor_group import ActorGroup
from tests.test_learner import sequences
from tests.test_sft import REPO, sft_overrides

LEARNER = LearnerConfig(backend="torch", micro_batch_size=2)
OPTIM = OptimSettings(lr=1e-3, total_steps=4, warmup_steps=1, weight_decay=0.01)


def test_resume_takes_the_same_next_step(tiny_dir, tmp_path):
    seqs = sequences(load_processor(tiny_dir), 4)
    first, second = seqs[:3], seqs[1:]
    a = LearnerWorker(str(tiny_dir), LEARNER, OPTIM)
    a.sft_step(first)
    a.save(str(tmp_path / "c1"), ckpt.TrainerState(step=1, policy_version=1, samples_seen=3))
    expected = a.sft_step(second)

    b = LearnerWorker(str(tmp_path / "c1"), LEARNER, OPTIM)  # a fresh worker on the checkpoint
    state = b.load_state(str(tmp_path / "c1"))
    assert (state.step, state.policy_version, state.samples_seen) == (1, 1, 3)
    got = b.sft_step(second)
    assert (got["loss"], got["lr"], got["grad_norm"], got["step"]) == (
        expected["loss"], expected["lr"], expected["grad_norm"], expected["step"])
    for (na, ta), (nb, tb) in zip(a.named_weights(), b.named_weights()):
        assert na == nb and torch.equal(ta, tb)


def test_checkpoint_dir_loads_in_transformers(tiny_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    w = LearnerWorker(str(tiny_dir), LEARNER, OPTIM)
    w.sft_step(sequences(w.processor, 2))
    w.save(str(tmp_path / "c"), ckpt.TrainerState(step=1))
    assert ckpt.is_complete(tmp_path / "c")
    named = dict(w.named_weights())
    assert named.keys() == load_file(tmp_path / "c" / "model.safetensors").keys()  # vLLM's names
    # Qwen3-VL (the tiny default) saves under model.language_model.* / model.visual.*
    assert {"lm_head.weight", "model.language_model.layers.0.mlp.up_proj.weight",
            "model.visual.patch_embed.proj.weight", "model.visual.pos_embed.weight"} <= named.keys()
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "c", local_files_only=True)
    AutoProcessor.from_pretrained(tmp_path / "c", local_files_only=True)
    reloaded = dict(ckpt.checkpoint_names(model, dict(model.named_parameters())))
    assert all(torch.equal(reloaded[n], t) for n, t in named.items())


def test_latest_and_prune(tmp_path):
    for step in (1, 2, 3):
        ckpt.write_state(ckpt.step_dir(tmp_path, step), ckpt.TrainerState(step=step))
        ckpt.save_safetensors(ckpt.step_dir(tmp_path, step) / "model.safetensors", {"w": torch.zeros(2)}, {})
    ckpt.step_dir(tmp_path, 4).mkdir()  # interrupted while saving: no state.json
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_dir(tmp_path, 3)
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000003", "step_0000004"]


def test_sft_fit_resumes_exactly(tiny_dir, tmp_path, monkeypatch):
    """An SFT run killed during step 3 and restarted ends with the weights of an uninterrupted run."""
    recipe = REPO / "recipes/tiny_cpu.yaml"
    extra = {"sft.save_every": 1, "sft.val_every": 0}
    whole = SFTTrainer(load_recipe(recipe, sft_overrides(tmp_path / "a", tiny_dir, steps=3, **extra))).fit()

    cfg = load_recipe(recipe, sft_overrides(tmp_path / "b", tiny_dir, steps=3, **extra))
    calls, original = [], ActorGroup.call_split

    def crash_on_third_step(self, method, *args, **kwargs):
        calls.append(method)
        if calls.count("sft_step") == 3:
            raise KeyboardInterrupt
        return original(self, method, *args, **kwargs)

    monkeypatch.setattr(ActorGroup, "call_split", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        SFTTrainer(cfg).fit()
    monkeypatch.setattr(ActorGroup, "call_split", original)
    assert ckpt.latest_checkpoint(cfg.run.dir / "checkpoints" / "sft").name == "step_0000002"
    resumed = SFTTrainer(cfg).fit()
    assert ckpt.read_state(resumed).samples_seen == ckpt.read_state(whole).samples_seen == 12
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_resumes_past_a_broken_checkpoint_and_never_restarts_over_its_metrics(tiny_dir, tmp_path, caplog):
    """The newest checkpoint truncated: resume takes the one before it, with a warning naming it.
    No readable checkpoint left but metrics logged: SFT refuses to start again from step 0."""
    cfg = load_recipe(REPO / "recipes/tiny_cpu.yaml",
                      sft_overrides(tmp_path, tiny_dir, steps=3, **{"sft.save_every": 1, "sft.val_every": 0}))
    SFTTrainer(cfg).fit()
    root = cfg.run.dir / "checkpoints" / "sft"
    model = ckpt.step_dir(root, 2) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    with caplog.at_level("WARNING", logger="awares_rl.checkpoint"):
        assert ckpt.latest_checkpoint(root) == ckpt.step_dir(root, 1)
    assert f"skipping checkpoint {ckpt.step_dir(root, 2)}" in caplog.text
    for step in (1, 2):
        (ckpt.state_dir(ckpt.step_dir(root, step)) / ckpt.STATE_FILE).unlink()
    with pytest.raises(ConfigError, match=r"sft/metrics.jsonl holds \d+ logged rows .* run.name"):
        SFTTrainer(cfg).fit()
