"""The bad-input catalogue (#12): every bad input a user can hand the system, and what they get.

Each case builds one bad input under ``tmp_path`` and feeds it to the function that reads it. The
outcome is one of two: a clear error whose message names the input (file:line, field or key)
and the fix, or a flagged item with its reason while the rest goes on. Nothing is silently
dropped, nothing wrong silently accepted; no case loads a model (the runner cases use the tiny
processor's tokenizer and a scripted engine) and each is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import awares_rl.evaluate as evaluate
from awares_rl import checkpoint as ckpt
from awares_rl.commands.data import run_validate
from awares_rl.config import load_recipe
from awares_rl.core.config_io import ConfigError
from awares_rl.core.engine import GenOutput
from awares_rl.core.images import ImageError, load_image
from awares_rl.core.protocol import ToolCallError, parse_answer, parse_tool_call
from awares_rl.core.sample import Sample, SampleError
from awares_rl.rollout.runner import EpisodeRunner, EpisodeSettings, SamplingConfig
from data_pipeline.datasets import ConvertError, convert, read_samples

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny_cpu.yaml"


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp_path)`` feeds it in. Either it raises ``error`` whose message
    holds every string of ``says`` (``{tmp}`` is tmp_path), or it returns a result ``check``
    accepts (the flagged item and the rest that went on, or the sensible value)."""

    name: str
    run: Callable[[Path], Any]
    error: type[Exception] | None = None
    says: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None


# ---------------------------------------------------------------- images
def _gradient(mode: str, size: tuple[int, int] = (120, 80)) -> Image.Image:
    """A left-to-right ramp over a value range typical of ``mode``."""
    w, h = size
    ramp = np.tile(np.linspace(0.0, 1.0, w), (h, 1))
    if mode == "I;16":  # a 12-bit sensor image: 0..4000 of 65535
        return Image.fromarray((ramp * 4000).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((ramp * 101_000 - 1000).astype(np.int32))
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32))  # 0..1 floats
    grey = Image.fromarray((ramp * 255).astype(np.uint8))
    if mode == "LA":
        return Image.merge("LA", (grey, Image.new("L", size, 255)))
    if mode == "RGBA":
        return Image.merge("RGBA", (grey, grey, grey, Image.new("L", size, 255)))
    return grey.convert(mode)


def _save(tmp: Path, image: Image.Image, name: str, **params: Any) -> Path:
    path = tmp / name
    image.save(path, **params)
    return path


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _png_bytes(size: tuple[int, int] = (200, 150)) -> bytes:
    buf = io.BytesIO()
    _gradient("RGB", size).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(side: int = 100_000) -> bytes:
    """A PNG header claiming ``side`` x ``side`` pixels (10^10), with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    _gradient("RGB", (200, 150)).save(buf, format="JPEG")
    return buf.getvalue()


def _contrast(image: Image.Image) -> int:
    lo, hi = image.convert("L").getextrema()
    return hi - lo


def _loads_rgb(mode: str, ext: str) -> Case:
    return Case(f"image mode {mode} loads as RGB with its contrast",
                lambda t: load_image(_save(t, _gradient(mode), f"m.{ext}")),
                check=lambda im: im.mode == "RGB" and im.size == (120, 80) and _contrast(im) > 200)


IMAGE_CASES = [
    Case("corrupt image bytes", lambda t: load_image(_write(t, "x.png", b"not an image at all")),
         ImageError, ("{tmp}/x.png", "not a readable image")),
    Case("empty image file", lambda t: load_image(_write(t, "x.png", b"")),
         ImageError, ("{tmp}/x.png", "not a readable image")),
    Case("truncated PNG", lambda t: load_image(_write(t, "x.png", _png_bytes()[:300])),
         ImageError, ("{tmp}/x.png", "not a readable image")),
    Case("truncated JPEG", lambda t: load_image(_write(t, "x.jpg", _jpeg_bytes()[:400])),
         ImageError, ("{tmp}/x.jpg", "not a readable image")),
    Case("decompression-bomb header (10^10 pixels)", lambda t: load_image(_write(t, "b.png", _bomb_png())),
         ImageError, ("{tmp}/b.png", "downscale")),
    Case("image over data.max_image_pixels", lambda t: load_image(_write(t, "x.png", _png_bytes()), 10_000),
         ImageError, ("{tmp}/x.png", "30000 pixels", "data.max_image_pixels")),
    Case("missing image file", lambda t: load_image(t / "gone.png"),
         ImageError, ("{tmp}/gone.png", "not found", "data root")),
    Case("aspect ratio 1:300", lambda t: load_image(_save(t, Image.new("RGB", (3000, 10)), "x.png")),
         ImageError, ("{tmp}/x.png", "aspect ratio", "pad or split")),
    *[_loads_rgb(mode, ext) for mode, ext in
      (("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"), ("I;16", "png"), ("I", "tif"), ("F", "tif"))],
    Case("image mode CMYK loads as RGB colours",
         lambda t: load_image(_save(t, Image.new("CMYK", (120, 80), (0, 255, 255, 0)), "m.jpg")),
         check=lambda im: im.mode == "RGB" and im.getpixel((60, 40))[0] > 200 > 60 > im.getpixel((60, 40))[1]),
    Case("image mode 1 (bilevel) loads as RGB",
         lambda t: load_image(_save(t, _gradient("L").point(lambda v: 255 * (v > 127)).convert("1"), "m.png")),
         check=lambda im: im.mode == "RGB" and _contrast(im) == 255),
    Case("palette image with a transparent colour composites on white",
         lambda t: load_image(_save(t, Image.new("P", (120, 80), 0), "m.png", transparency=0)),
         check=lambda im: im.mode == "RGB" and im.getpixel((5, 5)) == (255, 255, 255)),
    Case("transparent RGBA composites on white",
         lambda t: load_image(_save(t, Image.new("RGBA", (120, 80), (0, 0, 0, 0)), "m.png")),
         check=lambda im: im.mode == "RGB" and im.getpixel((5, 5)) == (255, 255, 255)),
    Case("image of 20x20 px (under 100 px) loads",
         lambda t: load_image(_save(t, _gradient("RGB", (20, 20)), "s.png")),
         check=lambda im: im.mode == "RGB" and im.size == (20, 20)),
    Case("image of aspect 1:100 loads (the processor accepts up to 1:200)",
         lambda t: load_image(_save(t, _gradient("RGB", (2000, 20)), "w.png")),
         check=lambda im: im.size == (2000, 20)),
]


# ---------------------------------------------------------------- tool calls (protocol.py)
def _call_error(text: str, reason: str) -> Case:
    return Case(f"tool call {text!r} -> {reason}", lambda t: parse_tool_call(text), ToolCallError,
                (reason, text))


TOOL_CASES = [
    Case("tool call ['3','0'] keeps order", lambda t: parse_tool_call("GET_CROPS: ['3','0']"),
         check=lambda ids: ids == [3, 0]),
    Case("tool call with bare ints", lambda t: parse_tool_call("GET_CROPS: [3, 0]"), check=lambda ids: ids == [3, 0]),
    Case("plain answer is no call", lambda t: parse_tool_call("red"), check=lambda ids: ids is None),
    _call_error("GET_CROPS: []", "empty"),
    _call_error("GET_CROPS: ['9']", "out-of-range"),
    _call_error("GET_CROPS: ['12']", "out-of-range"),
    _call_error("GET_CROPS: ['all']", "bad-item"),
    _call_error("GET_CROPS: ['-1']", "bad-item"),
    _call_error("GET_CROPS: ['003']", "bad-item"),
    _call_error("GET_CROPS: ['３']", "bad-item"),
    _call_error("GET_CROPS: ['0','1','2','3','4','5','6','7','8','0']", "too-many"),
    _call_error("GET_CROPS: ['1','1']", "duplicate"),
    _call_error("I need GET_CROPS: ['1']", "junk"),
    _call_error("GET_CROPS: ['3'", "partial"),
    Case("second tool call in the answer turn", lambda t: parse_answer("GET_CROPS: ['1']"), ToolCallError,
         ("second-call",)),
]


# ---------------------------------------------------------------- a scripted engine (runner cases)
@functools.cache
def _tokenizer():
    from awares_rl.models.tiny import TinyModelConfig, build_tiny

    return build_tiny(TinyModelConfig(seed=0), ["red", "blue"])[1].tokenizer


class _Engine:
    """Replies to turn 1 with ``turn1`` and to turn 2 with ``turn2``: (text, finish_reason)."""

    version = 0

    def __init__(self, turn1: tuple[str, str], turn2: tuple[str, str] = ("red", "stop")) -> None:
        self.turns, self.calls = (turn1, turn2), 0

    def generate(self, requests, sampling) -> list[GenOutput]:
        text, reason = self.turns[min(self.calls, 1)]
        self.calls += 1
        ids = _tokenizer()(text, add_special_tokens=False)["input_ids"]
        return [GenOutput(r.prompt_ids, ids, [0.0] * len(ids), reason) for r in requests]


def _episodes(tmp: Path, turn1: tuple[str, str], turn2=("red", "stop"), corrupt: bool = False, max_crops=9,
              max_turns=2):
    _save(tmp, _gradient("RGB", (256, 256)), "ok.png")
    _write(tmp, "bad.png", b"garbage")
    samples = [Sample("a", "ok.png", "q?", ("red",))] + ([Sample("b", "bad.png", "q?", ("red",))] if corrupt else [])
    runner = EpisodeRunner(_Engine(turn1, turn2), _tokenizer(), EpisodeSettings(max_crops=max_crops, max_turns=max_turns))
    return runner.run(samples, 1, SamplingConfig(0.0, 1.0, 8), root=tmp)


RUNNER_CASES = [
    Case("turn 1 hits the token limit: truncated, no answer",
         lambda t: _episodes(t, ("GET_CROPS: ['1", "length")),
         check=lambda eps: eps[0].truncated and eps[0].final_answer is None and not eps[0].crop_ids),
    Case("turn 2 hits the token limit: truncated, no answer",
         lambda t: _episodes(t, ("GET_CROPS: ['1']", "stop"), ("the answer is a very", "length")),
         check=lambda eps: eps[0].truncated and eps[0].final_answer is None and eps[0].crop_ids == [1]),
    Case("malformed call in turn 1 flags the episode",
         lambda t: _episodes(t, ("GET_CROPS: ['x']", "stop")),
         check=lambda eps: eps[0].invalid_tool_call == "bad-item" and eps[0].final_answer is None),
    Case("second call in turn 2 flags the episode",
         lambda t: _episodes(t, ("GET_CROPS: ['1']", "stop"), ("GET_CROPS: ['2']", "stop")),
         check=lambda eps: eps[0].invalid_tool_call == "second-call" and eps[0].final_answer is None),
    Case("more crops than rollout.max_crops flags the episode",
         lambda t: _episodes(t, ("GET_CROPS: ['1','2','3']", "stop"), max_crops=2),
         check=lambda eps: eps[0].invalid_tool_call == "too-many"),
    Case("a call in a single-turn episode (rollout.max_turns=1) flags it, no turn 2",
         lambda t: _episodes(t, ("GET_CROPS: ['1']", "stop"), max_turns=1),
         check=lambda eps: (eps[0].invalid_tool_call, eps[0].turn_texts, eps[0].crop_ids, eps[0].final_answer)
         == ("tools-off", ["GET_CROPS: ['1']"], [], None)),
    Case("a single-turn episode (rollout.max_turns=1) answers in turn 1",
         lambda t: _episodes(t, ("blue", "stop"), max_turns=1),
         check=lambda eps: (eps[0].final_answer, eps[0].num_turns, eps[0].invalid_tool_call) == ("blue", 1, None)),
    Case("corrupt image in a rollout batch: flagged episode, the rest runs",
         lambda t: _episodes(t, ("red", "stop"), corrupt=True),
         check=lambda eps: eps[0].final_answer == "red" and eps[1].error and "bad.png" in eps[1].error),
]


# ---------------------------------------------------------------- recipe values
def _recipe(*overrides: str):
    return lambda t: load_recipe(RECIPE, list(overrides))


def _bad_value(override: str, *says: str) -> Case:
    return Case(f"recipe {override}", _recipe(override), ConfigError, says)


def _recipe_file(text: bytes) -> Callable[[Path], Any]:
    return lambda t: load_recipe(_write(t, "r.yaml", text))


RECIPE_CASES = [
    _bad_value("grpo.lr=-1", "grpo.lr", "> 0"),
    _bad_value("sft.lr=nan", "sft.lr", "finite"),
    _bad_value("sft.lr=.inf", "sft.lr", "finite"),
    _bad_value("reward.alpha_miss=nan", "reward.alpha_miss", "finite"),
    _bad_value("reward.correct_threshold=5", "reward.correct_threshold", "(0, 1]"),
    _bad_value("reward.correct_threshold=0", "reward.correct_threshold", "(0, 1]"),
    _bad_value("eval.correct_threshold=0.6", "eval.correct_threshold", "moved to reward.correct_threshold"),
    _bad_value("trajectories.correct_threshold=0.6", "trajectories.correct_threshold", "moved to reward.correct_threshold"),
    _bad_value("reward.metric_judges={bogus: exact_match}", "metric_judges", "'bogus'", "anls"),
    _bad_value("reward.metric_judges={anls: nope}", "metric_judges['anls']", "not a judge"),
    _bad_value("trajectories.metric_judges={bogus: anls}", "trajectories.metric_judges", "'bogus'"),
    _bad_value("rollout.temperature=-1", "rollout.temperature", ">= 0"),
    _bad_value("rollout.top_p=0", "rollout.top_p", "(0, 1]"),
    _bad_value("rollout.max_new_tokens=0", "rollout.max_new_tokens", ">= 1"),
    _bad_value("rollout.max_turns=3", "rollout.max_turns=3", "1 (single turn, no crop tool) or 2"),
    _bad_value("grpo.tis_cap=0.5", "grpo.tis_cap", ">= 1"),
    _bad_value("sft.keep_checkpoints=0", "sft.keep_checkpoints", ">= 1"),
    _bad_value("sft.grad_clip=-1", "sft.grad_clip", ">= 0"),
    _bad_value("data.max_image_pixels=5", "data.max_image_pixels", "10000"),
    _bad_value("sft.lrr=1e-4", "sft.lrr", "unknown key", "lr"),
    _bad_value("sft.steps=abc", "sft.steps", "integer"),
    _bad_value("run.seed=[1", "run.seed=[1", "not valid YAML", "quote"),
    Case("override without '='", _recipe("sft.steps"), ConfigError, ("sft.steps", "key.subkey=value")),
    Case("recipe YAML syntax error", _recipe_file(b"run:\n  name: [oops\nsft:\n  lr: 1\n"), ConfigError,
         ("{tmp}/r.yaml:", "YAML syntax error")),
    Case("recipe with a Latin-1 byte", _recipe_file(b"run:\n  name: caf\xe9\n"), ConfigError,
         ("{tmp}/r.yaml", "not UTF-8")),
    Case("recipe file missing", lambda t: load_recipe(t / "none.yaml"), ConfigError, ("{tmp}/none.yaml", "not found")),
]


# ---------------------------------------------------------------- Sample JSONL (data validate)
def _row(**kw) -> dict:
    return {"id": "a", "image": "images/ok.png", "question": "q?", "answers": ["red"], **kw}


def _jsonl(tmp: Path, *lines: str | dict | bytes) -> Path:
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "images" / "ok.png").write_bytes(_png_bytes((200, 150)))
    (tmp / "images" / "bad.png").write_bytes(_png_bytes((200, 150))[:200])
    raw = [x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode() for x in lines]
    return _write(tmp, "s.jsonl", b"".join(r + b"\n" for r in raw))


def _validate(*lines: str | dict | bytes, on_error: str = "fail", max_pixels: int = 64_000_000):
    return lambda t: read_samples(_jsonl(t, *lines), on_error, decode_images=True, max_pixels=max_pixels)


def _bad_line(name: str, line: str | dict | bytes, *says: str) -> Case:
    return Case(f"JSONL: {name}", _validate(_row(id="z"), line), SampleError, ("{tmp}/s.jsonl:2", *says))


def _cli_validate(tmp: Path, *lines: str | dict) -> tuple[int, str]:
    path = _jsonl(tmp, *lines) if lines else _write(tmp, "s.jsonl", b"")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_validate(argparse.Namespace(src=str(path), on_error="skip", max_pixels=64_000_000))
    return code, err.getvalue()


JSONL_CASES = [
    _bad_line("invalid JSON", '{"id": "b", ', "invalid JSON"),
    _bad_line("a Latin-1 byte", b'{"id": "caf\xe9"}', "not UTF-8", "0xe9"),
    _bad_line("not an object", "[1, 2]", "expected a JSON object"),
    _bad_line("missing answers", {"id": "b", "image": "images/ok.png", "question": "q?"}, "'answers'", "missing"),
    _bad_line("unknown field", _row(id="b", answer="red"), "'answer'", "unknown field"),
    _bad_line("empty question", _row(id="b", question="  "), "'question'", "non-empty"),
    _bad_line("NaN box", '{"id": "b", "image": "images/ok.png", "question": "q", "answers": ["x"], '
              '"evidence_boxes": [[0, 0, NaN, 5]]}', "evidence_boxes[0]", "finite"),
    _bad_line("inverted box", _row(id="b", evidence_boxes=[[50, 0, 10, 5]]), "evidence_boxes[0]", "x2 > x1"),
    _bad_line("box outside the image", _row(id="b", evidence_boxes=[[0, 0, 500, 10]]),
              "evidence_boxes[0]", "outside the 200x150 image"),
    _bad_line("unknown metric", _row(id="b", metric="bleu"), "'metric'", "anls"),
    _bad_line("duplicate id", _row(id="z"), "duplicate id 'z'"),
    _bad_line("image path outside the data root", _row(id="b", image="../../../etc/passwd"),
              "'image'", "outside the data root"),
    _bad_line("absolute image path", _row(id="b", image="/etc/passwd"), "'image'", "outside the data root"),
    _bad_line("missing image file", _row(id="b", image="images/gone.png"), "'image'", "not found"),
    _bad_line("corrupt (truncated) image", _row(id="b", image="images/bad.png"), "'image'", "bad.png",
              "not a readable image"),
    Case("JSONL: image over max_pixels", _validate(_row(), max_pixels=10_000), SampleError,
         ("{tmp}/s.jsonl:1", "data.max_image_pixels")),
    Case("JSONL: empty file", lambda t: read_samples(_write(t, "s.jsonl", b"")), SampleError,
         ("{tmp}/s.jsonl", "empty")),
    Case("JSONL: blank lines only", lambda t: read_samples(_write(t, "s.jsonl", b"\n  \n")), SampleError,
         ("{tmp}/s.jsonl", "empty")),
    Case("JSONL: --on-error skip flags bad lines, keeps the rest",
         _validate(_row(id="a"), b'{"id": "\xff"}', _row(id="c", image="images/bad.png"), _row(id="d"),
                   on_error="skip"),
         check=lambda r: [s.id for s in r[0]] == ["a", "d"] and r[1].skipped == 2
         and ":2:" in r[1].errors[0] and ":3:" in r[1].errors[1]),
    Case("data validate: malformed lines exit 2 with their reasons",
         lambda t: _cli_validate(t, _row(), _row(id="b", image="images/bad.png")),
         check=lambda r: r[0] == 2 and "s.jsonl:2" in r[1] and "not a readable image" in r[1]),
    Case("data validate: an empty file exits 1", lambda t: _cli_validate(t),
         check=lambda r: r[0] == 1 and "empty" in r[1]),
]


# ---------------------------------------------------------------- convert (parquet, JSONL sources)
def _parquet(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"questionId": i, "question": "q?", "answers": ["x"], "image": {"bytes": b, "path": None}}
            for i, b in enumerate((_png_bytes(), b"\x00garbage", _png_bytes((100, 90))))]
    pq.write_table(pa.Table.from_pylist(rows), tmp / "d.parquet")
    return tmp / "d.parquet"


CONVERT_CASES = [
    Case("parquet with undecodable image bytes, --on-error skip",
         lambda t: convert("docvqa", _parquet(t), t / "out", "skip"),
         check=lambda r: r.written == 2 and r.skipped == 1 and "row 1" in r.errors[0] and "image" in r.errors[0]),
    Case("parquet with undecodable image bytes, --on-error fail",
         lambda t: convert("docvqa", _parquet(t), t / "out"), ConvertError, ("{tmp}/d.parquet:row 1", "image")),
    Case("convert: an image over --max-pixels is a skipped record",
         lambda t: convert("docvqa", _parquet(t), t / "out", "skip", max_pixels=10_000),
         check=lambda r: r.written == 1 and r.skipped == 2 and "row 0" in r.errors[0] and "max_pixels" in r.errors[0]),
    Case("corrupt parquet file", lambda t: convert("docvqa", _write(t, "d.parquet", b"PAR1 nonsense"), t / "out"),
         ConvertError, ("{tmp}/d.parquet", "not a readable parquet")),
    Case("Latin-1 line in a benchmark JSONL, --on-error skip",
         lambda t: convert("vstar", _write(t, "q.jsonl", b'{"text": "caf\xe9"}\n'), t / "out", "skip"),
         check=lambda r: r.written == 0 and r.skipped == 1 and "q.jsonl:1" in r.errors[0] and "UTF-8" in r.errors[0]),
]


# ---------------------------------------------------------------- eval
def _eval_full(tmp: Path) -> list:
    """`eval` mode full over a good, a corrupt and a good sample (engine calls scripted)."""
    path = _jsonl(tmp, _row(id="a"), _row(id="b", image="images/bad.png"), _row(id="c"))
    items = evaluate.read_items(path)

    def single_turn(engine, processor, batch, images, *args):
        return [evaluate.Prediction(it.sample.id, "red", 4, 16, 1.0, 0.1) for it in batch]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "_single_turn", single_turn)
        preds = evaluate.run_mode(None, None, items, tmp, "full", load_recipe(RECIPE, ["eval.batch_size=8"]))
    return [preds, evaluate.summarize(preds, items, "full")]


def _cli(*argv: str) -> tuple[int, str]:
    from awares_rl.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


EVAL_CASES = [
    Case("awares-rl eval on a bad JSONL line: exit 1 and the message, no traceback",
         lambda t: _cli("eval", "--data", str(_jsonl(t, _row(), "{oops")), "--checkpoint", str(t)),
         check=lambda r: r[0] == 1 and "s.jsonl:2" in r[1] and "Traceback" not in r[1]),
    Case("awares-rl sft with sft.lr=nan: exit 2 naming the key", lambda t: _cli("sft", "--recipe", str(RECIPE), "sft.lr=nan"),
         check=lambda r: r[0] == 2 and "sft.lr" in r[1] and "finite" in r[1]),
    Case("eval: a corrupt image is a flagged prediction, the rest goes on", _eval_full,
         check=lambda r: [p.sample_id for p in r[0]] == ["a", "b", "c"] and r[0][0].answer == "red"
         and r[0][1].answer is None and "bad.png" in r[0][1].error and r[1]["flagged"] == 1
         and r[1]["visual_tokens"] == 4),
    Case("eval: invalid JSON line", lambda t: evaluate.read_items(_jsonl(t, _row(), "{oops")), SampleError,
         ("{tmp}/s.jsonl:2", "invalid JSON")),
]


# ---------------------------------------------------------------- checkpoints
def _checkpoints(tmp: Path, broken: str | None) -> Path | None:
    """Steps 1 and 2 complete; then step 2 broken as ``broken`` says; the one resume picks."""
    for step in (1, 2):
        d = ckpt.step_dir(tmp, step)
        d.mkdir(parents=True)
        ckpt.save_safetensors(d / "model.safetensors", {"w": torch.zeros(64)}, {})
        ckpt.write_state(d, ckpt.TrainerState(step=step))
    newest = ckpt.step_dir(tmp, 2)
    state, model = ckpt.state_dir(newest) / ckpt.STATE_FILE, newest / "model.safetensors"
    if broken == "state-truncated":
        state.write_text(state.read_text()[:9])
    elif broken == "state-missing":
        state.unlink()
    elif broken == "model-truncated":
        model.write_bytes(model.read_bytes()[:100])
    elif broken == "model-missing":
        model.unlink()
    elif broken == "scheduler-truncated":
        (ckpt.state_dir(newest) / "scheduler.json").write_text('{"last_epoch": ')
    elif broken == "deepspeed-truncated":  # a real torch.save file (DeepSpeed's format), cut short
        shard = ckpt.state_dir(newest) / "deepspeed" / "state" / "mp_rank_00_model_states.pt"
        shard.parent.mkdir(parents=True)
        torch.save({"module": {"w": torch.zeros(256)}}, shard)
        shard.write_bytes(shard.read_bytes()[:700])
    return ckpt.latest_checkpoint(tmp)


def _fresh_start(tmp: Path) -> None:
    _checkpoints(tmp / "ck", "state-missing")
    (ckpt.state_dir(ckpt.step_dir(tmp / "ck", 1)) / ckpt.STATE_FILE).unlink()
    (tmp / "sft").mkdir()
    (tmp / "sft" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert ckpt.latest_checkpoint(tmp / "ck") is None
    ckpt.refuse_fresh_start(tmp / "sft" / "metrics.jsonl", tmp / "ck", "sft")


def _state_file(text: str) -> Callable[[Path], Any]:
    def run(tmp: Path):
        (tmp / ckpt.STATE_DIR).mkdir()
        (tmp / ckpt.STATE_DIR / ckpt.STATE_FILE).write_text(text)
        return ckpt.read_state(tmp)
    return run


CHECKPOINT_CASES = [
    Case("checkpoints intact: the newest", lambda t: _checkpoints(t, None), check=lambda p: p.name == "step_0000002"),
    *[Case(f"newest checkpoint {b}: the previous complete one", functools.partial(_checkpoints, broken=b),
           check=lambda p: p.name == "step_0000001")
      for b in ("state-truncated", "state-missing", "model-truncated", "model-missing", "scheduler-truncated",
                "deepspeed-truncated")],
    Case("no readable checkpoint over a metrics file: refuse to restart from 0", _fresh_start, ConfigError,
         ("{tmp}/sft/metrics.jsonl", "2 logged rows", "run.name", "save_every")),
    Case("truncated state.json", _state_file('{"step": 3, "pol'), ckpt.CheckpointFormatError,
         ("state.json", "not JSON", "delete")),
    Case("state.json of the wrong shape", _state_file('{"steps": 3}'), ckpt.CheckpointFormatError,
         ("state.json", "not a trainer state")),
    Case("state.json with a negative step", _state_file('{"step": -4}'), ckpt.CheckpointFormatError,
         ("state.json", "counts")),
]

CASES = IMAGE_CASES + TOOL_CASES + RUNNER_CASES + RECIPE_CASES + JSONL_CASES + CONVERT_CASES + EVAL_CASES + CHECKPOINT_CASES


def test_the_catalogue_is_large_and_unique():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    if case.error is None:
        result = case.run(tmp_path)
        assert case.check is not None and case.check(result), f"{case.name}: got {result!r}"
        return
    with pytest.raises(case.error) as info:
        case.run(tmp_path)
    message = str(info.value)
    for fragment in case.says:
        assert fragment.format(tmp=tmp_path) in message, f"{case.name}: {fragment!r} not in {message!r}"


def test_a_skipped_checkpoint_is_named_in_a_warning(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="awares_rl.checkpoint"):
        assert _checkpoints(tmp_path, "model-truncated").name == "step_0000001"
    assert f"skipping checkpoint {ckpt.step_dir(tmp_path, 2)}" in caplog.text and "model.safetensors" in caplog.text


def test_pruning_keeps_the_last_readable_checkpoint(tmp_path):
    _checkpoints(tmp_path, "model-truncated")
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_dir(tmp_path, 1)
