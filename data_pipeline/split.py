"""One converted Sample JSONL -> ``train`` / ``val`` / ``test`` JSONLs (``awares-rl data split``).

Seeded: the same file, sizes and seed give the same splits. Sizes are fractions (summing to 1) or
counts (summing to at most the samples; the rest is left out). By default the questions about one
image stay in one split (``by="image"``: DocVQA and POPE ask several questions per image, and a
shared image would leak the test set into training); whole images then go to the least filled
split, so the sizes are met as closely as whole images allow. Images stay where they are: each
sample's path is rewritten relative to the output folder, which must hold the images below it (a
data root, as ``read_samples`` requires) and no split file yet.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from awares_rl.core.sample import Sample, write_jsonl
from data_pipeline.datasets import read_samples

SPLITS = ("train", "val", "test")
BY = ("image", "sample")


def split_sizes(n: int, fractions: Sequence[float] | None = None, counts: Sequence[int] | None = None) -> list[int]:
    """Samples per split (train, val, test) of ``n``: from fractions summing to 1 (largest
    remainders round up) or from counts; ValueError names the bad argument and the fix."""
    if (fractions is None) == (counts is None):
        raise ValueError("give the split sizes as fractions or as counts (one of them)")
    if counts is not None:
        if len(counts) != 3 or any(c < 0 for c in counts) or sum(counts) > n or not sum(counts):
            raise ValueError(f"counts {list(counts)}: give 3 counts (train, val, test) >= 0, summing to 1..{n} "
                             f"(the samples in the file)")
        return list(counts)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions {list(fractions)}: give 3 fractions (train, val, test) >= 0 summing to 1, "
                         "e.g. 0.8,0.1,0.1")
    sizes = [math.floor(f * n) for f in fractions]
    by_remainder = sorted(range(3), key=lambda i: fractions[i] * n - sizes[i], reverse=True)
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def assign(samples: Sequence[Sample], sizes: Sequence[int], seed: int, by: str = "image") -> list[list[Sample]]:
    """The samples of each split, in file order: groups (an image's samples, or each sample) in a
    seeded order, each to the split least filled relative to its size among those not yet full."""
    if by not in BY:
        raise ValueError(f"by={by!r}: split by one of {', '.join(BY)}")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.image if by == "image" else s.id, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    chosen: list[list[int]] = [[], [], []]
    for group in order:
        open_ = [k for k in range(3) if len(chosen[k]) < sizes[k]]
        if not open_:
            break
        chosen[min(open_, key=lambda k: len(chosen[k]) / sizes[k])] += group  # the least filled split
    return [[samples[i] for i in sorted(idx)] for idx in chosen]


def _rebased(samples: Sequence[Sample], src: Path, out_dir: Path) -> list[Sample]:
    """The samples with image paths relative to ``out_dir``; ValueError if one is not below it."""
    out = []
    for s in samples:
        rel = os.path.relpath(s.image_path(src), out_dir.resolve())
        if rel.startswith(".." + os.sep) or rel == "..":
            raise ValueError(f"--out {out_dir}: the image {s.image_path(src)} of sample {s.id!r} is not below it; "
                             f"write the splits into {src.parent} (or a folder above the images)")
        out.append(replace(s, image=Path(rel).as_posix()))
    return out


def split_file(src: str | Path, out_dir: str | Path, fractions: Sequence[float] | None = None,
               counts: Sequence[int] | None = None, seed: int = 0, by: str = "image") -> dict[str, int]:
    """Write ``out_dir/{train,val,test}.jsonl`` from ``src`` (an empty split is not written);
    returns the samples each got. Refuses an ``out_dir`` that holds a split file already."""
    src, out_dir = Path(src), Path(out_dir)
    existing = [out_dir / f"{name}.jsonl" for name in SPLITS if (out_dir / f"{name}.jsonl").exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} exists: split into a fresh --out folder (nothing is overwritten)")
    samples = read_samples(src)[0]
    parts = assign(samples, split_sizes(len(samples), fractions, counts), seed, by)
    rebased = [_rebased(p, src, out_dir) for p in parts]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in zip(SPLITS, rebased, strict=True):
        if part:
            write_jsonl(part, out_dir / f"{name}.jsonl")
    return {name: len(part) for name, part in zip(SPLITS, rebased, strict=True)}
