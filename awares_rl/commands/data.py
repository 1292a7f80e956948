"""``awares-rl data ...`` subcommands: synth, convert, validate, split, openrlhf, trajectories.

``add_data_parsers(subparsers)`` registers them on the top-level argparse subparsers; each leaf
parser sets ``func`` to a handler ``(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from awares_rl.core.images import DEFAULT_MAX_PIXELS
from data_pipeline.config import SynthConfig
from data_pipeline.formats import CONVERTERS


def add_data_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data synth``, ``convert``, ``validate``, ``split`` and ``trajectories``; return the ``data`` parser."""
    data = subparsers.add_parser("data", help="generate, convert and validate datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    synth = sub.add_parser("synth", help="generate the synthetic high-res benchmark")
    synth.add_argument("--out", required=True, help="output folder (JSONL + images/)")
    synth.add_argument("--n", type=int, required=True, help="number of samples")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--split", default="train", help="split name (train / val / test ...)")
    synth.add_argument("--workers", type=int, default=1, help="parallel workers (Ray tasks)")
    synth.add_argument("--backend", default="auto", choices=("auto", "serial", "process", "ray"))
    synth.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a SynthConfig field, e.g. --set max_side=1344 (a multiple of side_step) (repeatable)",
    )
    synth.set_defaults(func=run_synth)

    conv = sub.add_parser("convert", help="convert a local benchmark to Sample JSONL")
    conv.add_argument("--format", required=True, choices=sorted(CONVERTERS))
    conv.add_argument("--src", required=True, help="HF save_to_disk folder, parquet, or JSON(L)")
    conv.add_argument("--out", required=True, help="output folder")
    conv.add_argument("--split", default=None, help="split of an HF DatasetDict folder")
    conv.add_argument("--on-error", default="fail", choices=("fail", "skip"))
    conv.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="images larger than this are refused (data.max_image_pixels)")
    conv.set_defaults(func=run_convert)

    val = sub.add_parser("validate", help="validate a Sample JSONL file and its images")
    val.add_argument("--src", required=True, help="Sample JSONL file")
    val.add_argument("--on-error", default="fail", choices=("fail", "skip"))
    val.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help="images larger than this are refused (data.max_image_pixels)")
    val.set_defaults(func=run_validate)

    orl = sub.add_parser("openrlhf", help="Sample JSONL -> OpenRLHF prompt JSONL for the AwaRes agent")
    orl.add_argument("--src", required=True, help="Sample JSONL file")
    orl.add_argument("--out", required=True, help="output JSONL (OpenRLHF --data.prompt_dataset)")
    orl.add_argument("--system-prompt", default=None, help="default: the protocol's SYSTEM_PROMPT")
    orl.add_argument("--on-error", default="fail", choices=("fail", "skip"))
    orl.set_defaults(func=run_openrlhf)

    add_split_parser(sub)
    add_trajectories_parser(sub)
    return data


def _numbers(cast):
    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected 3 comma-separated numbers (train,val,test)") from None
    return parse


def add_split_parser(sub: argparse._SubParsersAction) -> None:
    """``data split``: one converted JSONL -> train / val / test JSONLs (seeded; images stay put)."""
    split = sub.add_parser("split", help="split one Sample JSONL into train/val/test JSONLs (seeded)")
    split.add_argument("--src", required=True, help="Sample JSONL (e.g. made by data convert)")
    split.add_argument("--out", default=None, help="output folder, at or above the images (default: the src's folder)")
    sizes = split.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--fractions", type=_numbers(float), help="train,val,test fractions summing to 1, e.g. 0.8,0.1,0.1")
    sizes.add_argument("--counts", type=_numbers(int), help="train,val,test sample counts, e.g. 800,100,100")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--by", default="image", choices=("image", "sample"),
                       help="keep an image's questions in one split (image) or split questions freely (sample)")
    split.set_defaults(func=run_split)


def run_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    from awares_rl.core.sample import SampleError
    from data_pipeline.split import split_file

    out = Path(args.out) if args.out else Path(args.src).parent
    try:
        sizes = split_file(args.src, out, args.fractions, args.counts, args.seed, args.by)
    except (SampleError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.src} -> {out}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return 0


def add_trajectories_parser(sub: argparse._SubParsersAction) -> None:
    """``data trajectories``: the base model at low vs full res -> judge -> crops -> SFT JSONL."""
    traj = sub.add_parser("trajectories", help="build SFT trajectories with the base model (resumable)")
    traj.add_argument("--recipe", default="recipes/tiny_cpu.yaml", help="recipe YAML")
    traj.add_argument("--split", default="train", help="data split (train / val / test)")
    traj.add_argument("--model", default=None, help="base model dir (default: model.path, else the run's base model)")
    traj.add_argument("--out", default=None, help="output JSONL (default: <run dir>/trajectories/<split>.jsonl)")
    traj.add_argument("--limit", type=int, default=None, help="process at most N new samples (rerun to resume)")
    traj.add_argument("--quiet", action="store_true", help="no progress bar")
    traj.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trajectories.batch_size=8")
    traj.set_defaults(func=run_trajectories)


def run_trajectories(args: argparse.Namespace) -> int:
    from awares_rl.config import load_recipe
    from awares_rl.core.trajectory import TrajectoryError
    from awares_rl.trajectories import build_split

    try:
        build_split(load_recipe(args.recipe, args.overrides), args.split, args.model, args.out, args.limit,
                    progress=not args.quiet)
    except (TrajectoryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def parse_overrides(pairs: list[str]) -> SynthConfig:
    """``["max_side=1344", ...]`` -> SynthConfig (values cast to each field's type)."""
    types = {f.name: type(f.default) for f in fields(SynthConfig)}
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kwargs[key] = types[key](value)
    return SynthConfig(**kwargs)


def run_synth(args: argparse.Namespace) -> int:
    from data_pipeline.synthetic import generate

    path = generate(args.out, args.n, args.seed, args.split, parse_overrides(args.set),
                    workers=args.workers, backend=args.backend)
    print(f"wrote {args.n} samples of split {args.split!r} to {path}")
    return 0


def _print_skipped(errors: list[str], limit: int = 10) -> None:
    for e in errors[:limit]:
        print(f"  skipped: {e}", file=sys.stderr)
    if len(errors) > limit:
        print(f"  ... and {len(errors) - limit} more", file=sys.stderr)


def run_convert(args: argparse.Namespace) -> int:
    from data_pipeline.datasets import ConvertError, convert

    try:
        report = convert(args.format, args.src, args.out, args.on_error, args.split, args.max_pixels)
    except (ConvertError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_skipped(report.errors)
    print(report.summary())
    return 0


def run_openrlhf(args: argparse.Namespace) -> int:
    from awares_rl.core.sample import SampleError
    from data_pipeline.openrlhf_data import write_prompt_dataset

    try:
        report = write_prompt_dataset(args.src, args.out, args.system_prompt, args.on_error)
    except (SampleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_skipped(report.errors)
    print(report.summary())
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from awares_rl.core.sample import SampleError
    from data_pipeline.datasets import read_samples

    try:
        samples, report = read_samples(args.src, args.on_error, decode_images=True, max_pixels=args.max_pixels)
    except (SampleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_skipped(report.errors)
    print(f"{args.src}: {len(samples)} valid samples, {report.skipped} malformed")
    return 0 if report.skipped == 0 else 2
