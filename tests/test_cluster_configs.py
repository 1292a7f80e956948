"""The cluster configs fit the recipes they run: the KubeRay RayJobs (cluster/k8s/rayjob.yaml) and
the ``ray up`` config (cluster/ray-up/gpu-cluster.yaml), their structure and their arithmetic
against ``cluster.resources.recipe_resources``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from awares_rl.config import load_recipe
from cluster.resources import (
    Node,
    group_node,
    kuberay_nodes,
    rayup_nodes,
    recipe_resources,
    unplaced,
)
from cluster.submit import EXCLUDES

ROOT = Path(__file__).resolve().parents[1]
GPU_RECIPES = ("recipes/qwen25vl_7b_gpu.yaml", "recipes/qwen3vl_8b_gpu.yaml")
# RayJob v1 fields this project sets (KubeRay's CRD, ray.io_rayjobs.yaml): a typo'd key is
# silently dropped by the API server's pruning, so name them exactly
RAYJOB_SPEC = {"entrypoint", "entrypointNumCpus", "entrypointNumGpus", "runtimeEnvYAML",
               "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "submitterPodTemplate", "rayClusterSpec"}
CLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"}


def _rayjobs() -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "cluster/k8s/rayjob.yaml").read_text()))


def _recipe_of(job: dict) -> str:
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:4] == ["python", "-m", "awares_rl.cli", "run"], job["spec"]["entrypoint"]
    return args[4]


def _containers(job: dict) -> list[tuple[dict, dict]]:
    """(pod spec, container) of the head, every worker group and the submitter."""
    cs = job["spec"]["rayClusterSpec"]
    pods = [cs["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cs["workerGroupSpecs"]),
            job["spec"]["submitterPodTemplate"]["spec"]]
    return [(p, c) for p in pods for c in p["containers"]]


def test_one_rayjob_per_gpu_recipe():
    assert sorted(_recipe_of(j) for j in _rayjobs()) == sorted(GPU_RECIPES)


@pytest.mark.parametrize("job", _rayjobs(), ids=lambda j: j["metadata"]["name"])
def test_rayjob_structure(job):
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec, cs = job["spec"], job["spec"]["rayClusterSpec"]
    assert set(spec) <= RAYJOB_SPEC and set(cs) <= CLUSTER_SPEC
    assert all(isinstance(spec[k], (int, float)) for k in ("entrypointNumCpus", "entrypointNumGpus"))
    renv = yaml.safe_load(spec["runtimeEnvYAML"])  # the image's checkout, shipped as submit does
    assert renv["working_dir"] and {".venv", ".git", "runs"} <= set(renv["excludes"]) <= set(EXCLUDES)
    for group in [cs["headGroupSpec"], *cs["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # the CRD: strings
    for group in cs["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("job", _rayjobs(), ids=lambda j: j["metadata"]["name"])
def test_rayjob_token_comes_from_a_secret_everywhere(job):
    for _, c in _containers(job):
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "awares-rl-ray-token", "key": "auth_token"}, c["name"]


def _recipe_paths(cfg) -> list[str]:
    return [p for p in (cfg.run.out_dir, cfg.data.dir, cfg.model.path) if p and p.startswith("/")]


@pytest.mark.parametrize("job", _rayjobs(), ids=lambda j: j["metadata"]["name"])
def test_rayjob_pods_that_run_work_mount_the_recipe_paths(job):
    cfg = load_recipe(str(ROOT / _recipe_of(job)))
    cs = job["spec"]["rayClusterSpec"]
    groups = [cs["headGroupSpec"], *cs["workerGroupSpecs"]]
    working = [g for g in groups if group_node("", g).cpus > 0]
    assert working and len(_recipe_paths(cfg)) == 3
    for group in working:
        pod = group["template"]["spec"]
        claims = {v["name"] for v in pod["volumes"]}
        mounts = pod["containers"][0]["volumeMounts"]
        assert {m["name"] for m in mounts} <= claims
        for path in _recipe_paths(cfg):
            assert any(Path(path).is_relative_to(m["mountPath"]) for m in mounts), (group.get("groupName"), path)


def _need(recipe: str):
    return recipe_resources(load_recipe(str(ROOT / recipe)))


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipe_arithmetic(recipe):
    from awares_rl.grpo import grpo_cpus

    need = _need(recipe)
    # 2 learners + 2 rollout workers + the KL reference, 1 GPU each; the driver's engine, 1 more
    assert need.stage_total("grpo", "gpus") == 5 and need.driver.gpus == 1 and need.peak("gpus") == 6
    assert need.stage_total("grpo", "cpus") == grpo_cpus(load_recipe(str(ROOT / recipe))) == 22
    assert need.peak("cpus") == 26


@pytest.mark.parametrize("job", _rayjobs(), ids=lambda j: j["metadata"]["name"])
def test_rayjob_holds_its_recipe_and_places_the_driver(job):
    need = _need(_recipe_of(job))
    assert (job["spec"]["entrypointNumCpus"], job["spec"]["entrypointNumGpus"]) == (need.driver.cpus, need.driver.gpus)
    assert unplaced(need, kuberay_nodes(job["spec"]["rayClusterSpec"])) == []


def test_the_old_two_gpu_cluster_is_refused_by_name():
    nodes = [Node("head", 8), Node("gpu-0", 16, 1), Node("gpu-1", 16, 1)]  # what rayjob.yaml offered
    gpu = "(4 CPU, 1 GPU)"
    assert unplaced(_need(GPU_RECIPES[0]), nodes) == [
        f"sft: learner {gpu}", f"grpo: learner {gpu}", f"grpo: rollout worker {gpu}",
        f"grpo: rollout worker {gpu}", f"grpo: reference {gpu}"]


def _rayup() -> dict:
    return yaml.safe_load((ROOT / "cluster/ray-up/gpu-cluster.yaml").read_text())


def test_rayup_config_passes_rays_own_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates ray up's schema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_rayup(), schema)


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_rayup_cluster_holds_the_recipe(recipe):
    config = _rayup()
    assert sum(t.get("max_workers", 0) for n, t in config["available_node_types"].items()
               if n != config["head_node_type"]) <= config["max_workers"]
    assert unplaced(_need(recipe), rayup_nodes(config)) == []


def test_rayup_gives_every_node_the_token():
    config = _rayup()
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token" in cmd, cmd
        path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", cmd)
        assert path and path.group(1) in config["file_mounts"], cmd  # copied to head and workers
    assert not any("--generate" in c for c in config["head_start_ray_commands"])  # one token, not a new one
