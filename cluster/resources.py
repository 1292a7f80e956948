"""What a recipe asks of a Ray cluster, and whether a cluster's nodes can hold it.

``recipe_resources(cfg)`` lists, per stage, the Ray bundles the stage's actors reserve (the same
arithmetic as ``awares_rl.grpo.grpo_cpus`` for GRPO, plus GPUs), and the driver: the pipeline's own
process, where the trajectory builder (with ``trajectories.num_workers: 1``), the tiny model's
pretraining and the evaluation engines run. The driver holds its share for the whole job (a Ray
Job's entrypoint resources), so the peak is the driver plus the largest stage.

``unplaced(need, nodes)`` packs every stage onto a cluster's nodes (first fit, largest bundle
first, as Ray's placement roughly does) and names the bundles that found no node: a placement
group that waits forever, said before the job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig


@dataclass(frozen=True)
class Bundle:
    """``count`` actors of one kind, each reserving ``cpus`` and ``gpus``."""

    what: str
    count: int
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class Node:
    """One Ray node's logical resources."""

    name: str
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class RecipeResources:
    driver: Bundle
    stages: dict[str, list[Bundle]] = field(default_factory=dict)

    def stage_total(self, stage: str, key: str) -> float:
        """``key`` ("cpus" or "gpus") the stage's actors reserve, without the driver."""
        return sum(b.count * getattr(b, key) for b in self.stages[stage])

    def peak(self, key: str) -> float:
        """The most of ``key`` the job holds at once: the driver plus its largest stage."""
        return getattr(self.driver, key) + max((self.stage_total(s, key) for s in self.stages), default=0.0)


def _engine(rc) -> tuple[float, float]:
    return rc.cpus_per_worker, rc.gpus_per_worker


def recipe_resources(cfg: RecipeConfig) -> RecipeResources:
    """The Ray resources ``awares-rl run`` of ``cfg`` reserves: the driver and each stage's actors."""
    lc, rc, tc = cfg.learner, cfg.rollout, cfg.trajectories
    learner = (lc.cpus_per_worker, lc.gpus_per_worker)
    in_driver = [_engine(rc)]  # eval always; trajectories too with one worker
    on_ray = lc.use_ray
    if not on_ray:
        in_driver.append(learner)
    stages = {
        "trajectories": [Bundle("trajectory worker", tc.num_workers, *_engine(rc))] if tc.num_workers > 1 else [],
        "sft": [Bundle("learner", lc.num_workers, *learner)] if on_ray else [],
        "grpo": [Bundle("rollout worker", rc.num_workers, *_engine(rc)),
                 Bundle("reward worker", cfg.reward.num_workers, cfg.reward.cpus_per_worker)],
    }
    if on_ray:
        stages["grpo"].insert(0, Bundle("learner", lc.num_workers, *learner))
        if cfg.grpo.kl_coef > 0:
            stages["grpo"].append(Bundle("reference", 1, *learner))
    cpus, gpus = max(c for c, _ in in_driver), max(g for _, g in in_driver)
    return RecipeResources(Bundle("driver", 1, cpus, gpus), stages)


def unplaced(need: RecipeResources, nodes: list[Node]) -> list[str]:
    """For each stage, the bundles (driver included) no node has room for; empty when all fit."""
    missing = []
    for stage, bundles in need.stages.items():
        free = {n.name: [n.cpus, n.gpus] for n in nodes}
        items = [(b.what, b.cpus, b.gpus) for b in [need.driver, *bundles] for _ in range(b.count)]
        for what, cpus, gpus in sorted(items, key=lambda i: (-i[2], -i[1])):
            home = next((k for k, (c, g) in free.items() if c >= cpus and g >= gpus), None)
            if home is None:
                missing.append(f"{stage}: {what} ({cpus:g} CPU, {gpus:g} GPU)")
            else:
                free[home][0] -= cpus
                free[home][1] -= gpus
    return missing


def _quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity ("6", 6, "500m") as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_node(name: str, group: dict) -> Node:
    """The Ray node a KubeRay group's pod starts: rayStartParams num-cpus/num-gpus, else the first
    container's limits (KubeRay's rule)."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    cpus = params.get("num-cpus", limits.get("cpu", 0))
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return Node(name, _quantity(cpus), _quantity(gpus))


def kuberay_nodes(cluster_spec: dict) -> list[Node]:
    """The nodes of a RayCluster spec (a RayJob's ``spec.rayClusterSpec``) at its most replicas."""
    nodes = [group_node("head", cluster_spec["headGroupSpec"])]
    for group in cluster_spec.get("workerGroupSpecs", []):
        count = group.get("maxReplicas", group.get("replicas", 1))
        nodes += [group_node(f"{group['groupName']}-{i}", group) for i in range(count)]
    return nodes


def rayup_nodes(config: dict) -> list[Node]:
    """The nodes of a ``ray up`` config at each node type's ``max_workers`` (the head once)."""
    nodes = []
    for name, spec in config["available_node_types"].items():
        count = 1 if name == config["head_node_type"] else spec.get("max_workers", 0)
        res = spec["resources"]
        nodes += [Node(f"{name}-{i}", res.get("CPU", 0), res.get("GPU", 0)) for i in range(count)]
    return nodes
