"""What a recipe asks of a Ray cluster, and whether the cluster can hold it, said before any actor
is created (a placement group whose bundles do not fit waits forever).

``recipe_resources(cfg)`` lists, per stage, the ``Bundle``s the stage's actors reserve and the
driver: the pipeline's own process, where the trajectory builder (with ``trajectories.num_workers:
1``), the tiny model's pretraining and the evaluation engines run. The driver holds its share for
the whole job (a Ray Job's entrypoint resources), so the peak is the driver plus the largest stage.

``check_resources(bundles)`` compares a stage's bundles with the running cluster
(``ray.cluster_resources()`` and the largest node) and fails with a message naming what the recipe
asks, what the cluster has and which keys to change; GRPO, SFT and the trajectory workers call it.
``unplaced(need, nodes)`` packs every stage onto a cluster config's nodes (first fit, largest
bundle first, as Ray's placement roughly does) and names the bundles that found no node.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig


KINDS = ("CPU", "GPU")


class ResourceError(RuntimeError):
    """The recipe asks for more than the cluster has."""


@dataclass(frozen=True)
class Bundle:
    """``count`` actors of one kind, each reserving ``cpus`` and ``gpus``; ``keys``: the recipe keys
    that set them (named in the error when they do not fit)."""

    what: str
    count: int
    cpus: float
    gpus: float = 0.0
    keys: str = ""

    @classmethod
    def of(cls, section: str, cfg, what: str | None = None) -> Bundle:
        """From a config section with ``num_workers``, ``cpus_per_worker`` (and ``gpus_per_worker``)."""
        keys = [f"{section}.{k}" for k in ("num_workers", "cpus_per_worker", "gpus_per_worker") if hasattr(cfg, k)]
        return cls(what or section, cfg.num_workers, cfg.cpus_per_worker, getattr(cfg, "gpus_per_worker", 0.0),
                   ", ".join(keys))

    def each(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus}

    def describe(self) -> str:
        return f"{self.what}: {self.count} x ({self.cpus:g} CPU, {self.gpus:g} GPU)  [{self.keys}]"


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


def torch_threads(threads: int, cpus: float) -> int:
    """An actor's torch thread count: ``threads`` when > 0, all the node's cores when -1 (stages
    that take turns on the same cores, e.g. rollout and learner of the synchronous loop on one
    machine: each gets every core while it runs), else its logical CPU reservation ``cpus``.
    The reservation only places actors (Ray pins nothing); the thread count is what computes."""
    if threads == -1:
        return os.cpu_count() or 1
    return threads if threads > 0 else max(1, int(cpus))


def concurrent_threads(threads: int, ways: int) -> int | None:
    """The torch threads each of ``ways`` passes gets while they run at once on actors whose
    ``threads`` setting is -1 (all the node's cores each: at once they would oversubscribe them, 4
    threads on 2 cores ran 2.7x slower than one after the other): the cores split between them.
    None (each its own ``torch_threads``) when the actors have their own, disjoint CPUs."""
    if threads != -1:
        return None
    return max(1, (os.cpu_count() or 1) // ways)


THREADS_HELP = "0 (= cpus_per_worker), -1 (all the node's cores) or a count >= 1"


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
    traj_keys = "trajectories.num_workers, rollout.cpus_per_worker, rollout.gpus_per_worker"
    stages = {
        "trajectories": [Bundle("trajectory worker", tc.num_workers, *_engine(rc), traj_keys)]
        if tc.num_workers > 1 else [],
        "sft": [Bundle.of("learner", lc)] if on_ray else [],
        "grpo": [Bundle.of("rollout", rc, "rollout worker")],
    }
    if cfg.reward.remote_url is None:  # else a running `awares-rl serve-reward` scores (reward.make_scorer)
        stages["grpo"].append(Bundle.of("reward", cfg.reward, "reward worker"))
    if on_ray:
        stages["grpo"].insert(0, Bundle.of("learner", lc))
        if cfg.grpo.kl_coef > 0:
            stages["grpo"].append(Bundle("reference", 1, *learner,
                                         "learner.cpus_per_worker, learner.gpus_per_worker; grpo.kl_coef > 0 adds it"))
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


def totals(asks: Sequence[Bundle]) -> dict[str, float]:
    return {k: sum(a.count * a.each()[k] for a in asks) for k in KINDS}


def _has(resources: dict) -> str:
    return " and ".join(f"{resources.get(k, 0.0):g} {k}s" for k in KINDS)


def shortfalls(asks: Sequence[Bundle], cluster: dict, nodes: Sequence[dict]) -> list[str]:
    """What does not fit: a kind whose total exceeds the cluster's, an actor larger than every node."""
    need = totals(asks)
    out = [f"{need[k]:g} {k}s in all, the cluster has {cluster.get(k, 0.0):g}"
           for k in KINDS if need[k] > cluster.get(k, 0.0) + 1e-9]
    for a in asks:
        if a.count and nodes and not any(all(a.each()[k] <= n.get(k, 0.0) + 1e-9 for k in KINDS) for n in nodes):
            out.append(f"one {a.what} actor needs {a.cpus:g} CPU and {a.gpus:g} GPU on one node; the largest "
                       f"node has {max(n.get('CPU', 0.0) for n in nodes):g} CPU, "
                       f"{max(n.get('GPU', 0.0) for n in nodes):g} GPU")
    return out


def cluster_view() -> tuple[dict, list[dict]]:
    """The running Ray cluster's total resources and each live node's."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return ray.cluster_resources(), nodes


def check_resources(asks: Sequence[Bundle], cluster: dict | None = None,
                    nodes: Sequence[dict] | None = None) -> None:
    """Raise ResourceError unless ``asks`` fit the cluster (the running Ray's, unless given)."""
    asks = [a for a in asks if a.count > 0]
    if cluster is None:
        cluster, nodes = cluster_view()
    problems = shortfalls(asks, cluster, nodes or [])
    if not problems:
        return
    need = totals(asks)
    lines = "\n  ".join(a.describe() for a in asks)
    raise ResourceError(
        f"the recipe asks for {_has(need)}, the Ray cluster has {_has(cluster)} "
        f"({'; '.join(problems)}). Asked:\n  {lines}\nLower those keys in the recipe, or give the cluster more "
        "(more nodes, or `ray start --num-cpus N --num-gpus M`); actors would wait for placement forever.")
