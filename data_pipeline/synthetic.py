"""The synthetic high-res benchmark on disk: ``generate()`` writes ``<split>.jsonl`` + PNG images.

Deterministic: sample i of split s is a pure function of (seed, s, i, config) (see
``scene.sample_seed``), so the same call writes the same bytes, a split never depends on how many
samples another split has, and train/val/test draw disjoint random streams. Generation fans out
over Ray tasks (or a process pool) for large n, shows a progress bar, and resumes: samples whose
image and JSONL line already exist are kept, the rest are generated, and the JSONL is rewritten in
index order at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from awares_rl.core.sample import Sample, SampleError, iter_jsonl, parse_line, write_jsonl
from data_pipeline.config import SynthConfig
from data_pipeline.scene import make_scene, sample_id

GENERATOR_VERSION = 1
BACKENDS = ("auto", "serial", "process", "ray")
_CHUNK = 32  # samples per task: amortises task overhead, keeps the progress bar moving


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    split: str = "train",
    cfg: SynthConfig | None = None,
    workers: int = 1,
    backend: str = "auto",
    progress: bool = True,
) -> Path:
    """Write samples 0..n-1 of ``split`` to ``out_dir/<split>.jsonl`` and ``out_dir/images/``.

    ``backend``: "serial", "process" (a process pool), "ray" (Ray tasks; starts a local Ray if
    none is running), or "auto" (Ray inside a running Ray program, else a process pool; serial
    for one worker or n <= 64). Returns the JSONL path.
    """
    cfg = cfg or SynthConfig()
    if n < 0 or workers < 1 or backend not in BACKENDS:
        raise ValueError(f"need n >= 0, workers >= 1, backend in {BACKENDS}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{split}.jsonl"
    _check_manifest(out / f"{split}.manifest.json", seed, split, cfg)
    done = existing_samples(jsonl)
    todo = [i for i in range(n) if sample_id(split, i) not in done]
    if todo:
        with open(jsonl, "a", encoding="utf-8") as f, tqdm(
            total=n, initial=n - len(todo), desc=f"synth {split}", disable=not progress
        ) as bar:
            for chunk in _run(out, seed, split, cfg, todo, workers, backend):
                for obj in chunk:
                    f.write(json.dumps(obj) + "\n")
                    done[obj["id"]] = Sample.from_json(obj)
                f.flush()
                bar.update(len(chunk))
    write_jsonl(sorted(done.values(), key=lambda s: s.id), jsonl)
    return jsonl


def _check_manifest(path: Path, seed: int, split: str, cfg: SynthConfig) -> None:
    """Refuse to resume into a folder generated with another seed or config."""
    manifest = {"version": GENERATOR_VERSION, "seed": seed, "split": split, "config": asdict(cfg)}
    if path.exists():
        old = json.loads(path.read_text())
        if old != manifest:
            raise ValueError(
                f"{path}: this folder holds split {split!r} generated with other settings "
                f"(seed/config/version differ); use a fresh --out folder or the same settings"
            )
    else:
        path.write_text(json.dumps(manifest, indent=1))


def existing_samples(jsonl: Path) -> dict[str, Sample]:
    """Samples already on disk: valid JSONL lines whose image file exists (for resuming).

    A truncated or corrupt line (an interrupted write) is dropped and regenerated."""
    if not jsonl.exists():
        return {}
    done = {}
    for lineno, line in iter_jsonl(jsonl):
        try:
            s = parse_line(line, f"{jsonl}:{lineno}")
        except SampleError:
            continue
        if (jsonl.parent / s.image).is_file():
            done[s.id] = s
    return done


def generate_chunk(out_dir: str, seed: int, split: str, cfg: SynthConfig, indices: list[int]) -> list[dict]:
    """Render and save the images of ``indices``; return their JSONL objects (a worker task)."""
    objs = []
    for i in indices:
        sample, image = make_scene(seed, split, i, cfg)
        path = Path(out_dir) / sample.image
        tmp = path.with_name(path.name + ".tmp")
        image.save(tmp, format="PNG", compress_level=6)
        tmp.replace(path)  # atomic: a half-written image never counts as done
        objs.append(sample.to_json())
    return objs


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _run(out: Path, seed: int, split: str, cfg: SynthConfig, todo: list[int], workers: int,
         backend: str) -> Iterable[list[dict]]:
    if backend == "auto":
        backend = _auto_backend(workers, len(todo))
    chunks = list(_chunks(todo, _CHUNK))
    if backend == "serial" or workers == 1:
        return (generate_chunk(str(out), seed, split, cfg, c) for c in chunks)
    if backend == "process":
        return _run_process_pool(str(out), seed, split, cfg, chunks, workers)
    return _run_ray(str(out), seed, split, cfg, chunks, workers)


def _auto_backend(workers: int, n: int) -> str:
    """Ray when this process already runs Ray (a cluster job: tasks spread over nodes); else a
    local process pool (a fresh local Ray costs ~8 s to start, more than 1000 samples take on
    2 cores); serial for one worker or few samples."""
    if workers == 1 or n <= 64:
        return "serial"
    try:
        import ray

        if ray.is_initialized():
            return "ray"
    except ImportError:
        pass
    return "process"


def _run_process_pool(out, seed, split, cfg, chunks, workers) -> Iterator[list[dict]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(generate_chunk, out, seed, split, cfg, c) for c in chunks]
        for fut in as_completed(futures):
            yield fut.result()


def _run_ray(out, seed, split, cfg, chunks, workers) -> Iterator[list[dict]]:
    import ray

    from cluster.actor_group import init_local_ray

    started = not ray.is_initialized()
    if started:
        init_local_ray(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(generate_chunk)
        pending = [task.remote(out, seed, split, cfg, c) for c in chunks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


def image_digest(path: str | Path) -> str:
    """SHA-256 of an image's decoded pixels (independent of PNG encoder settings)."""
    from PIL import Image

    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes() + repr(im.size).encode()).hexdigest()


def split_overlap(jsonl_a: str | Path, jsonl_b: str | Path) -> dict[str, list[str]]:
    """Samples shared by two splits: identical images, and identical (image, question) pairs.

    Questions alone repeat by design (templates x colours); a leak is the same image (or the
    same image with the same question) in both splits. Returns the offending ids of ``jsonl_a``.
    """
    def index(path: Path) -> dict[str, tuple[str, str]]:
        out = {}
        for lineno, line in iter_jsonl(path):
            s = parse_line(line, f"{path}:{lineno}")
            out[s.id] = (image_digest(s.image_path(path)), s.question)
        return out

    a, b = index(Path(jsonl_a)), index(Path(jsonl_b))
    images_b = {d for d, _ in b.values()}
    pairs_b = set(b.values())
    return {
        "images": sorted(i for i, (d, _) in a.items() if d in images_b),
        "pairs": sorted(i for i, pair in a.items() if pair in pairs_b),
    }
