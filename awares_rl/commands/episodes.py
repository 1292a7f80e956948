"""``awares-rl episodes``: run episodes on a few samples and print them as a table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from awares_rl.config import load_recipe
from awares_rl.core.episode import Episode
from awares_rl.rollout import EpisodeRunner, EpisodeSettings, SamplingConfig, make_engine
from awares_rl.workspace import ensure_data, ensure_model


def episodes_table(episodes: list[Episode]) -> Table:
    """A readable table: question, tool call, crops, answer, RTR, visual tokens."""
    table = Table(title=f"{len(episodes)} episodes", show_lines=False)
    for col in ("sample", "question", "turn 1", "crops", "answer", "gold", "RTR", "vis tok", "flags"):
        table.add_column(col, overflow="fold")
    for ep in episodes:
        flags = ",".join(f for f, on in (("invalid:" + str(ep.invalid_tool_call), ep.invalid_tool_call),
                                         ("truncated", ep.truncated), ("error", ep.error)) if on)
        table.add_row(
            f"{ep.sample_id}#{ep.group_index}", ep.question, ep.turn_texts[0] if ep.turn_texts else "",
            ",".join(map(str, ep.crop_ids)) or "-", ep.final_answer if ep.final_answer is not None else "-",
            "|".join(ep.answers), f"{ep.rtr:.2f}", str(ep.visual_tokens), flags or "",
        )
    return table


def run_episodes(recipe: str, overrides: list[str], n: int = 16, checkpoint: str | None = None,
                 group_size: int = 1, split: str = "val", batch: int = 8) -> int:
    cfg = load_recipe(recipe, overrides)
    data_file = ensure_data(cfg, split)
    model_dir = Path(checkpoint) if checkpoint else ensure_model(cfg)
    from data_pipeline.datasets import read_samples

    samples = read_samples(data_file)[0][:n]
    engine = make_engine(cfg.rollout, cfg.model, model_dir, seed=cfg.run.seed)
    runner = EpisodeRunner(engine, _tokenizer(engine), EpisodeSettings.from_rollout(cfg.rollout, cfg.data.max_image_pixels))
    sampling = SamplingConfig(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
    episodes: list[Episode] = []
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"episodes ({type(engine).__name__})", total=len(samples))
            for i in range(0, len(samples), batch):
                chunk = samples[i:i + batch]
                episodes += runner.run(chunk, group_size, sampling, seed=cfg.run.seed + i, root=data_file.parent)
                progress.advance(task, len(chunk))
    finally:
        engine.close()
    Console().print(episodes_table(episodes))
    return 0


def _tokenizer(engine):
    return engine.processor.tokenizer if hasattr(engine, "processor") else engine.tokenizer
