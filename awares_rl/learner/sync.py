"""Weight sync, learner -> rollout workers, through Ray's object store in buckets.

    update = learner.call("publish_weights", version)[0]         # rank 0: a WeightUpdate
    ray.get([w.load_weights.remote(update, version) for w in rollout_workers])

The learner (rank 0) ``ray.put``s its trainable weights itself, about ``learner.sync_bucket_mb``
MB a bucket, and hands back a :class:`WeightUpdate`: the buckets' object refs, the names in each,
their bytes and the policy version. The driver passes only that small record on (no whole-model
copy through it); each rollout worker fetches the buckets one at a time (``iter_weights``).
Frozen parameters (``learner.freeze_vision``: the ViT) never change, so they are never sent.
The buckets live while a WeightUpdate refers to them (Ray's reference counting: the driver's, or
a pool's that replays the latest to restarted workers) and while the learner that put them lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

NamedTensors = list[tuple[str, torch.Tensor]]
FETCH_TIMEOUT_S = 300.0  # one bucket's ray.get (the learner's node may be busy, never this slow)


@dataclass(frozen=True)
class WeightUpdate:
    """One policy version's trainable weights, as object-store buckets."""

    version: int
    buckets: tuple[Any, ...]  # ray.ObjectRef, each to a list of (checkpoint name, CPU tensor)
    names: tuple[tuple[str, ...], ...]  # the names in each bucket, in order
    bytes: int  # tensor bytes over all buckets

    @property
    def num_tensors(self) -> int:
        return sum(len(n) for n in self.names)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def bucket_tensors(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[NamedTensors]:
    """``named`` in order, cut into buckets of at most ``bucket_bytes`` each (a tensor larger than
    that gets a bucket of its own); no empty bucket."""
    buckets: list[NamedTensors] = []
    size = bucket_bytes  # forces a first bucket
    for name, t in named:
        if size + tensor_bytes(t) > bucket_bytes or not buckets:
            buckets.append([])
            size = 0
        buckets[-1].append((name, t))
        size += tensor_bytes(t)
    return buckets


def own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU, alone in its storage. Pickling a view (DeepSpeed's parameters are views
    into one flat buffer) writes its whole storage: 76 views of the tiny model's 3.8 MB buffer
    made a 0.24 s publish instead of 0.02 s (bench_weight_sync --learner-backend deepspeed)."""
    t = t.detach().cpu()
    if t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == tensor_bytes(t):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def publish(named: Iterable[tuple[str, torch.Tensor]], version: int, bucket_mb: float) -> WeightUpdate:
    """``ray.put`` the (name, tensor) pairs in buckets of about ``bucket_mb`` MB from THIS process
    (the learner actor owns them); the tensors are copied into the store, so live parameters may
    be passed as they are (a view is copied out of its storage first, one bucket at a time)."""
    import ray

    buckets = bucket_tensors(named, int(bucket_mb * 2**20))
    return WeightUpdate(
        version=version,
        buckets=tuple(ray.put([(n, own_storage(t)) for n, t in b]) for b in buckets),
        names=tuple(tuple(n for n, _ in b) for b in buckets),
        bytes=sum(tensor_bytes(t) for b in buckets for _, t in b),
    )


def iter_weights(update: WeightUpdate, timeout_s: float = FETCH_TIMEOUT_S) -> Iterator[tuple[str, torch.Tensor]]:
    """The update's (name, tensor) pairs, fetched one bucket at a time (each dropped once passed)."""
    import ray

    if not isinstance(update, WeightUpdate):
        raise TypeError(f"a weight update must be an awares_rl.learner.sync.WeightUpdate (LearnerWorker."
                        f"publish_weights), got {type(update).__name__}")
    for i, ref in enumerate(update.buckets):
        try:
            bucket = ray.get(ref, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"weight bucket {i + 1}/{len(update.buckets)} of policy version {update.version} "
                               f"not fetched within {timeout_s:g} s (is the learner's node reachable?)") from None
        except ray.exceptions.ObjectLostError as e:
            raise RuntimeError(f"weight bucket {i + 1}/{len(update.buckets)} of policy version {update.version} "
                               f"is gone (the learner that put it died?): {type(e).__name__}") from e
        if [n for n, _ in bucket] != list(update.names[i]):
            raise ValueError(f"weight bucket {i + 1} of policy version {update.version} does not hold the names "
                             "its WeightUpdate lists")
        yield from bucket
