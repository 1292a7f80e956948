"""cluster.resources: a recipe that asks for more than the Ray cluster has fails before placement,
naming what it asks, what the cluster has and the keys to change (a real local Ray, 2 CPUs, no GPU)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from awares_rl.config import load_recipe
from cluster.actor_group import init_local_ray
from cluster.resources import Bundle, ResourceError, check_resources, concurrent_threads, shortfalls

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def ray_2cpu():
    import ray

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    init_local_ray(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def test_shortfalls_totals_and_largest_node():
    asks = [Bundle("learner", 2, 4, 1, "learner.num_workers"), Bundle("rollout", 1, 1, 0, "rollout.num_workers")]
    assert shortfalls(asks, {"CPU": 16, "GPU": 2}, [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]) == []
    got = shortfalls(asks, {"CPU": 16, "GPU": 2}, [{"CPU": 16, "GPU": 0}, {"CPU": 2, "GPU": 2}])
    assert got == ["one learner actor needs 4 CPU and 1 GPU on one node; the largest node has 16 CPU, 2 GPU"]
    assert shortfalls(asks, {"CPU": 9}, [{"CPU": 9}]) == ["2 GPUs in all, the cluster has 0",
                                                           "one learner actor needs 4 CPU and 1 GPU on one node; "
                                                           "the largest node has 9 CPU, 0 GPU"]


def test_concurrent_passes_split_shared_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert concurrent_threads(-1, 2) == 1  # both would take both cores: one each
    assert concurrent_threads(-1, 3) == 1  # never below one
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert concurrent_threads(-1, 2) == 8
    assert concurrent_threads(0, 2) is None and concurrent_threads(4, 2) is None  # own CPUs: their own


def test_of_reads_a_section_and_names_its_keys():
    cfg = load_recipe(RECIPE, ["learner.num_workers=2", "learner.gpus_per_worker=0.5"])
    ask = Bundle.of("learner", cfg.learner)
    assert (ask.count, ask.cpus, ask.gpus) == (2, cfg.learner.cpus_per_worker, 0.5)
    assert ask.keys == "learner.num_workers, learner.cpus_per_worker, learner.gpus_per_worker"
    assert Bundle.of("reward", cfg.reward).keys == "reward.num_workers, reward.cpus_per_worker"


def test_grpo_recipe_asking_for_gpus_fails_fast_on_a_cpu_cluster(ray_2cpu):
    from awares_rl.grpo import grpo_asks

    cfg = load_recipe(RECIPE, ["learner.gpus_per_worker=1", "rollout.gpus_per_worker=1", "grpo.kl_coef=0.01"])
    t0 = time.perf_counter()
    with pytest.raises(ResourceError) as e:
        check_resources(grpo_asks(cfg))
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "the recipe asks for" in msg and "3 GPUs" in msg and "the Ray cluster has 2 CPUs and 0 GPUs" in msg
    for key in ("learner.gpus_per_worker", "rollout.gpus_per_worker", "grpo.kl_coef > 0 adds it"):
        assert key in msg
    assert "reference: 1 x" in msg


def test_sft_learners_fail_before_any_actor(ray_2cpu, tmp_path):
    """The SFT stage's own path: ``learner_group`` raises before creating a placement group."""
    from ray.util import placement_group_table

    from awares_rl.sft import learner_group

    cfg = load_recipe(RECIPE, ["learner.num_workers=3", "learner.cpus_per_worker=1"])
    before = len(placement_group_table())
    with pytest.raises(ResourceError, match=r"(?s)3 CPUs in all, the cluster has 2.*learner: 3 x \(1 CPU, 0 GPU\)"):
        learner_group(cfg, tmp_path)
    assert len(placement_group_table()) == before


def test_trajectory_workers_checked(ray_2cpu, tmp_path):
    from data_pipeline.trajectories import ray_process

    cfg = load_recipe(RECIPE, ["trajectories.num_workers=2", "rollout.gpus_per_worker=1"])
    process = ray_process((), 2, cfg.rollout, tmp_path, tmp_path, "train")
    with pytest.raises(ResourceError, match="trajectory worker: 2 x .*trajectories.num_workers"):
        next(process([[]]))


def test_a_recipe_that_fits_passes(ray_2cpu):
    from awares_rl.grpo import grpo_asks

    cfg = load_recipe(RECIPE, ["learner.cpus_per_worker=0.5", "rollout.cpus_per_worker=0.5",
                               "reward.cpus_per_worker=0.5"])
    check_resources(grpo_asks(cfg))


class Idle:
    def __init__(self, dist=None):
        pass


def test_a_placement_that_cannot_be_met_times_out_naming_it(ray_2cpu, monkeypatch):
    """Past the check (other jobs may hold what the cluster has), a placement group still does not
    wait forever: it gives up after PLACEMENT_TIMEOUT_S, says what it waited for, and is removed."""
    from ray.util import placement_group_table

    import cluster.actor_group as ag

    monkeypatch.setattr(ag, "PLACEMENT_TIMEOUT_S", 2.0)
    before = {k for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
    with pytest.raises(TimeoutError, match=r"placement of 1 x Idle \({'CPU': 8.0} each\) not ready after 2 s"):
        ag.ActorGroup(Idle, 1, cpus_per_actor=8.0)
    assert {k for k, v in placement_group_table().items() if v["state"] != "REMOVED"} == before
