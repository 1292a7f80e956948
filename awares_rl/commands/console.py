"""What the terminal shows while a command runs: our own log lines, progress bars and tables; the
libraries' logs (Ray, vLLM and its engine processes, DeepSpeed, transformers, W&B) go to the run's
``logs/<stage>.log`` instead, unless ``awares-rl --verbose`` (or ``AWARES_RL_VERBOSE=1``)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from awares_rl.core.run_paths import RunPaths
from cluster.actor_group import VERBOSE_ENV, log_to_driver, ray_logs_dir

OWN_PACKAGES = ("awares_rl", "reward", "data_pipeline", "cluster")
# Loggers that print on their own (a handler of theirs, no propagation) when their library loads.
LIBRARY_LOGGERS = ("ray", "vllm", "DeepSpeed", "transformers", "torch", "wandb", "httpx")
VLLM_CONFIG_ENV = "VLLM_LOGGING_CONFIG_PATH"  # read by each process that imports vLLM
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
console = Console()


class OwnLines(logging.Filter):
    """The terminal's share: our packages' records, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] in OWN_PACKAGES


def setup_logging(verbose: bool) -> None:
    """The CLI's root logger: every record at INFO (DEBUG when verbose); on the terminal only
    ``OwnLines`` unless verbose. Quiet W&B's and the hub's own terminal output the same way."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    handler = logging.StreamHandler()
    if not log_to_driver():
        handler.addFilter(OwnLines())
        logging.captureWarnings(True)  # the libraries' FutureWarnings & co. go to the log file
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.DEBUG if log_to_driver() else logging.INFO, format=FORMAT,
                        handlers=[handler], force=True)


def route_libraries() -> None:
    """The libraries' loggers hand their records to the root's handlers (the stage's log file)
    instead of printing; transformers' weight-loading bars go too."""
    import ray  # noqa: F401  (configures its logger on import: do that first)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def vllm_logging_config(log_file: Path) -> str:
    """A ``VLLM_CONFIG_ENV`` file: vLLM's engine processes (spawned, so without our
    handlers) append their records to ``log_file``."""
    config = {"version": 1, "disable_existing_loggers": False, "formatters": {"plain": {"format": FORMAT}},
              "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain"}},
              "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}}}
    fd, path = tempfile.mkstemp(prefix="awares-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path


@contextmanager
def stage_logs(paths: RunPaths, stage: str) -> Iterator[Path]:
    """During the block every log record also goes to ``paths.log_file(stage)`` (the libraries'
    only there unless verbose); at its end, ``paths.ray_logs(stage)`` links to the worker logs of
    the Ray session it ran on, and a local Ray is shut down (each stage sizes its own)."""
    log_file = paths.log_file(stage)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    vllm_config, before = None, os.environ.get(VLLM_CONFIG_ENV)
    if not log_to_driver():
        route_libraries()
        vllm_config = os.environ[VLLM_CONFIG_ENV] = vllm_logging_config(log_file)
    try:
        yield log_file
    finally:
        end_ray_session(paths.ray_logs(stage))
        if vllm_config:
            os.unlink(vllm_config)
            os.environ.pop(VLLM_CONFIG_ENV)
            if before is not None:
                os.environ[VLLM_CONFIG_ENV] = before
        logging.getLogger().removeHandler(handler)
        handler.close()


def end_ray_session(link: Path) -> None:
    """Point ``link`` at the worker logs of the Ray session this driver is on, and shut a local Ray
    down (one joined through ``RAY_ADDRESS`` stays up); nothing without a Ray session."""
    logs = ray_logs_dir()
    if logs is None:
        return
    link.unlink(missing_ok=True)
    link.symlink_to(logs, target_is_directory=True)
    if not os.environ.get("RAY_ADDRESS"):
        import ray

        ray.shutdown()


def banner(title: str, what: str, out: Path, log_file: Path) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"{what}\n  -> {out}   (log: {log_file})", highlight=False, soft_wrap=True)


def skipped(title: str, out: Path) -> None:
    console.print(f"[bold]{title}[/]: done ({out}), skipped", highlight=False, soft_wrap=True)
