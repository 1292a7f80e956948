"""Prepare what a command needs in the run directory: data splits and a model to start from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from awares_rl.core.config_io import ConfigError
from awares_rl.core.run_paths import RunPaths

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig

log = logging.getLogger(__name__)


def data_file(cfg: RecipeConfig, split: str) -> Path:
    """Path of a split's JSONL: ``data.dir/<file>`` or, for synthetic data, ``run_dir/data``."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split {split!r}: use train, val or test")
    root = Path(cfg.data.dir) if cfg.data.dir else RunPaths(cfg.run.dir).data
    return root / getattr(cfg.data, split)


def ensure_data(cfg: RecipeConfig, split: str) -> Path:
    """The split's JSONL, generating the synthetic benchmark when the recipe uses it."""
    path = data_file(cfg, split)
    if path.is_file():
        return path
    if cfg.data.dir:
        raise ConfigError(f"data.dir: {path} does not exist; convert your dataset with `awares-rl data convert`")
    from data_pipeline.synthetic import generate

    n = {"train": cfg.data.n_train, "val": cfg.data.n_val, "test": cfg.data.n_test}[split]
    log.info("generating %d synthetic %s samples into %s", n, split, path.parent)
    generate(path.parent, n=n, seed=cfg.run.seed, split=split, cfg=cfg.synth)
    return path


def vocab_texts(cfg: RecipeConfig) -> list[str]:
    """Questions and answers of the training split: the tiny tokenizer's corpus."""
    from data_pipeline.datasets import read_samples

    texts = []
    for s in read_samples(ensure_data(cfg, "train"))[0]:
        texts.append(s.question)
        texts.extend(s.answers)
    return texts


def base_model(cfg: RecipeConfig) -> Path:
    """The model the pipeline starts from: ``model.path`` if set, else the run's pretrained base
    model (``awares-rl pretrain``); ConfigError naming both fixes when there is none."""
    path = Path(cfg.model.path) if cfg.model.path else RunPaths(cfg.run.dir).model("base")
    if not (path / "config.json").is_file():
        raise ConfigError(f"no model at {path} (no config.json): set model.path to a local model directory, "
                          "or run `awares-rl pretrain` first")
    return path


def ensure_model(cfg: RecipeConfig) -> Path:
    """``model.path`` if set; else the run's newest stage; else a fresh tiny model (``init``)."""
    if cfg.model.path:
        return base_model(cfg)
    paths = RunPaths(cfg.run.dir)
    latest = paths.latest_model()
    if latest is not None:
        return latest
    from awares_rl.models.tiny import save_tiny

    log.info("building the embedded tiny %s into %s", cfg.tiny.family, paths.model("init"))
    return save_tiny(paths.model("init"), cfg.tiny, vocab_texts(cfg))
