"""Before any actor is created: can the Ray cluster hold what the recipe asks for?

A placement group whose bundles do not fit waits forever, so GRPO, SFT and the trajectory workers
first compare their request (``ActorAsk``: how many actors, CPUs and GPUs each, and the recipe keys
that set them) with ``ray.cluster_resources()`` and the largest node, and fail with a message
naming what the recipe asks, what the cluster has and which keys to change:

    check_resources([ActorAsk.of("learner", cfg.learner), ActorAsk.of("rollout", cfg.rollout)])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("CPU", "GPU")


class ResourceError(RuntimeError):
    """The recipe asks for more than the cluster has."""


@dataclass(frozen=True)
class ActorAsk:
    role: str  # "learner", "rollout", ...
    count: int  # actors
    cpus: float  # each
    gpus: float = 0.0  # each
    keys: str = ""  # the recipe keys that set count, cpus and gpus

    @classmethod
    def of(cls, section: str, cfg, role: str | None = None) -> ActorAsk:
        """From a config section with ``num_workers``, ``cpus_per_worker`` (and ``gpus_per_worker``)."""
        gpus = getattr(cfg, "gpus_per_worker", 0.0)
        keys = [f"{section}.{k}" for k in ("num_workers", "cpus_per_worker", "gpus_per_worker")
                if hasattr(cfg, k)]
        return cls(role or section, cfg.num_workers, cfg.cpus_per_worker, gpus, ", ".join(keys))

    def each(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus}

    def describe(self) -> str:
        return f"{self.role}: {self.count} x ({self.cpus:g} CPU, {self.gpus:g} GPU)  [{self.keys}]"


def totals(asks: Sequence[ActorAsk]) -> dict[str, float]:
    return {k: sum(a.count * a.each()[k] for a in asks) for k in KINDS}


def _has(resources: dict) -> str:
    return " and ".join(f"{resources.get(k, 0.0):g} {k}s" for k in KINDS)


def shortfalls(asks: Sequence[ActorAsk], cluster: dict, nodes: Sequence[dict]) -> list[str]:
    """What does not fit: a kind whose total exceeds the cluster's, an actor larger than every node."""
    need = totals(asks)
    out = [f"{need[k]:g} {k}s in all, the cluster has {cluster.get(k, 0.0):g}"
           for k in KINDS if need[k] > cluster.get(k, 0.0) + 1e-9]
    for a in asks:
        if a.count and nodes and not any(all(a.each()[k] <= n.get(k, 0.0) + 1e-9 for k in KINDS) for n in nodes):
            out.append(f"one {a.role} actor needs {a.cpus:g} CPU and {a.gpus:g} GPU on one node; the largest "
                       f"node has {max(n.get('CPU', 0.0) for n in nodes):g} CPU, "
                       f"{max(n.get('GPU', 0.0) for n in nodes):g} GPU")
    return out


def cluster_view() -> tuple[dict, list[dict]]:
    """The running Ray cluster's total resources and each live node's."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return ray.cluster_resources(), nodes


def check_resources(asks: Sequence[ActorAsk], cluster: dict | None = None,
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
