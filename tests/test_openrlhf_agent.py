"""The AwaRes agent through OpenRLHF's own agent interface (openrlhf 0.11.2, CPU).

OpenRLHF's ``MultiTurnAgentExecutor`` loop runs for real, with the tiny model's processor; only the
policy is scripted: an engine that answers with fixed turns in place of vLLM (OpenRLHF's loop
calls ``llm_engine.generate(token_ids, sampling_params, multi_modal_data=...)``).
"""

from __future__ import annotations

import asyncio
import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openrlhf.utils.agent")  # openrlhf 0.11.2, installed --no-deps (setup_venv.sh)

from openrlhf.datasets.prompts_dataset import preprocess_data  # noqa: E402
from openrlhf.utils.agent import AgentExecutorBase  # noqa: E402

import reward.openrlhf_agent  # noqa: E402
from awares_rl.cli import main  # noqa: E402
from awares_rl.core.crops import cut_crops, low_res_view  # noqa: E402
from awares_rl.core.images import ImageError  # noqa: E402
from awares_rl.core.sample import Sample, write_jsonl  # noqa: E402
from awares_rl.core.tokens import (  # noqa: E402
    IMAGE_TOKEN,
    assistant_ids,
    crops_turn_ids,
    expand_image_tokens,
    first_turn_ids,
    image_token_counts,
)
from awares_rl.models.tiny import TinyModelConfig, build_tiny  # noqa: E402
from data_pipeline.openrlhf_data import write_prompt_dataset  # noqa: E402
from reward.config import RewardConfig  # noqa: E402
from reward.http import create_app  # noqa: E402
from reward.openrlhf import openrlhf_requests  # noqa: E402
from reward.openrlhf_agent import AgentExecutor, scorer_from_env  # noqa: E402
from reward.scoring import RewardRequest, score_requests  # noqa: E402
from reward.service import RewardService  # noqa: E402
from tests.conftest import make_image, start_server  # noqa: E402

CFG = RewardConfig(judge="exact_match")
TOKEN = "agent-test-token-0123456789"
QUESTIONS = ["what is in the red panel?", "what colour is the image?"]


@pytest.fixture(scope="module")
def processor():
    return build_tiny(TinyModelConfig(seed=0), [*QUESTIONS, "red", "blue"])[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Two samples (Sample JSONL) converted by `write_prompt_dataset` to orl.jsonl."""
    root = tmp_path_factory.mktemp("orl")
    for name, seed, size in (("tool", 1, (448, 504)), ("direct", 2, (560, 448))):
        make_image(seed, size).save(root / f"{name}.png")
    samples = [Sample("tool", "tool.png", QUESTIONS[0], ("red",), needs_high_res=True),
               Sample("direct", "direct.png", QUESTIONS[1], ("blue",), metric="exact")]
    write_jsonl(samples, root / "train.jsonl")
    assert write_prompt_dataset(root / "train.jsonl", root / "orl.jsonl").written == 2
    return root, samples


@pytest.fixture(scope="module")
def rows(data_root):
    """sample id -> (Sample, its image, its row as OpenRLHF loads a JSON dataset)."""
    from datasets import load_dataset

    root, samples = data_root
    data = load_dataset("json", data_files=str(root / "orl.jsonl"), split="train")
    return {s.id: (s, Image.open(root / s.image).convert("RGB"), row) for s, row in zip(samples, data)}


class ScriptedEngine:
    """Stands in for vLLM: returns ``turns`` in order as (text, finish_reason); records each call."""

    def __init__(self, tokenizer, turns: list[tuple[str, str]]) -> None:
        self.tokenizer, self.turns, self.calls = tokenizer, list(turns), []

    async def generate(self, token_ids, sampling_params, multi_modal_data=None):
        assert self.turns, "the agent asked for more turns than the episode allows"
        text, finish = self.turns.pop(0)
        self.calls.append((list(token_ids), list((multi_modal_data or {}).get("image", []))))
        ids = assistant_ids(self.tokenizer, text) if finish == "stop" else self.tokenizer(text)["input_ids"]
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason=finish)])


def run_episode(processor, row, turns, scorer=None):
    prompt, label = preprocess_data(row, None, "input", "label", processor.apply_chat_template)
    engine = ScriptedEngine(processor.tokenizer, [(t, "stop") if isinstance(t, str) else t for t in turns])
    executor = AgentExecutor(scorer or functools.partial(score_requests, cfg=CFG))
    params = SimpleNamespace(max_tokens=None, logprobs=None)
    out = asyncio.run(executor.execute(prompt, label, params, 4096, processor, engine))
    return out, engine, prompt


def same_pixels(got, want) -> bool:
    return len(got) == len(want) and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want))


def test_prompt_is_our_first_turn(processor, rows):
    sample, _, row = rows["tool"]
    prompt, label = preprocess_data(row, None, "input", "label", processor.apply_chat_template)
    assert processor.tokenizer(prompt, add_special_tokens=False)["input_ids"] == first_turn_ids(
        processor.tokenizer, sample.question)
    assert json.loads(label)["needs_high_res"] is True and json.loads(label)["answers"] == ["red"]


def test_crop_episode_through_openrlhf(processor, rows):
    sample, image, row = rows["tool"]
    out, engine, prompt = run_episode(processor, row, ["GET_CROPS: ['0','4']", "red"])
    tok, low, crops = processor.tokenizer, low_res_view(image), cut_crops(image, [0, 4])
    assert len(engine.calls) == 2
    assert same_pixels(engine.calls[0][1], [low])  # turn 1 sees the low-res view only
    assert same_pixels(engine.calls[1][1], [low, *crops])  # turn 2 also the crops, from the original
    # the whole conversation is our token layout, pads expanded as the processor does
    compact = (first_turn_ids(tok, sample.question) + assistant_ids(tok, "GET_CROPS: ['0','4']")
               + crops_turn_ids(tok, [0, 4]) + assistant_ids(tok, "red"))
    counts = image_token_counts(processor.image_processor, [low, *crops])
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert out["observation_tokens"] == expand_image_tokens(compact, image_id, counts)
    vision = processor.image_processor(images=[low, *crops], return_tensors="pt")
    assert out["mm_train_inputs"]["pixel_values"].equal(vision["pixel_values"])
    expected = score_requests([RewardRequest("red", ["red"], None, True, [0, 4])], CFG)[0]
    assert out["reward"] == expected.total == pytest.approx(1 - 0.15)
    assert out["scores"] == expected.answer == 1.0
    assert out["extra_logs"]["num_crops"] == 2.0 and out["label"] == row["label"]
    # OpenRLHF's remote-reward path reads the same episode from the decoded conversation
    query = tok.decode(out["observation_tokens"], skip_special_tokens=False)
    assert openrlhf_requests([query], [prompt], [row["label"]]) == [
        RewardRequest("red", ["red"], None, True, [0, 4], None)]


@pytest.mark.parametrize(("name", "turns", "request_"), [
    ("direct", ["blue"], RewardRequest("blue", ["blue"], "exact", None)),
    ("tool", ["GET_CROPS: ['9']"], RewardRequest(None, ["red"], None, True, [], "out-of-range")),
    ("tool", ["GET_CROPS: ['1']", "GET_CROPS: ['2']", "red"],
     RewardRequest(None, ["red"], None, True, [1], "second-call")),
    ("tool", [("GET_CROPS: ['3'", "length")], RewardRequest(None, ["red"], None, True)),
    ("tool", ["GET_CROPS: ['3']", ("red", "length")], RewardRequest(None, ["red"], None, True, [3])),
])
def test_episode_endings(processor, rows, name, turns, request_):
    out, engine, _ = run_episode(processor, rows[name][2], turns)
    assert len(engine.calls) == min(2, len(turns))  # at most 2 turns; a third is never asked for
    assert out["reward"] == score_requests([request_], CFG)[0].total
    assert out["extra_logs"]["invalid_tool_call"] == float(request_.invalid_tool_call is not None)
    assert len(out["action_ranges"]) == len(engine.calls)


def test_reward_service_scores_the_same(processor, rows, monkeypatch):
    server, thread, url = start_server(__import__("uvicorn").Config(
        create_app(RewardService(CFG), TOKEN, CFG), host="127.0.0.1", port=0, log_level="warning"))
    try:
        monkeypatch.setenv("AWARES_REWARD_URL", url)
        monkeypatch.setenv("AWARES_REWARD_TOKEN", TOKEN)
        out, _, _ = run_episode(processor, rows["tool"][2], ["GET_CROPS: ['5']", "red"], scorer_from_env())
    finally:
        server.should_exit = True
        thread.join(10)
    assert out["reward"] == score_requests([RewardRequest("red", ["red"], None, True, [5])], CFG)[0].total


def test_loaded_by_openrlhf(monkeypatch):
    try:  # OpenRLHF's loader sits beside its vLLM actor: it needs vLLM (here the CPU build)
        from openrlhf.trainer.ray.vllm_engine import _load_agent_executor
    except Exception as e:  # noqa: BLE001 - vLLM missing or broken: ImportError, OSError, ...
        pytest.skip(f"openrlhf.trainer.ray.vllm_engine does not import here: {e!r}")
    monkeypatch.delenv("AWARES_REWARD_URL", raising=False)
    monkeypatch.setenv("AWARES_REWARD_RECIPE", "recipes/tiny_cpu.yaml")
    executor = _load_agent_executor(reward.openrlhf_agent.__file__)
    assert isinstance(executor, AgentExecutorBase) and type(executor).__name__ == "AgentExecutor"
    parts = executor.scorer([RewardRequest("Blue", ["blue"], "exact")])
    assert parts[0].judge == "exact_match" and parts[0].total == 1.0  # the recipe's metric_judges


def test_bad_rows_say_what_to_fix(processor, rows, tmp_path):
    _, _, row = rows["tool"]
    with pytest.raises(ValueError, match="awares-rl data openrlhf"):
        run_episode(processor, {**row, "label": "red"}, ["red"])
    with pytest.raises(ValueError, match="0 image tokens"):
        run_episode(processor, {**row, "input": "no image here"}, ["red"])
    gone = json.dumps({**json.loads(row["label"]), "image": str(tmp_path / "gone.png")})
    with pytest.raises(ImageError, match="gone.png: image file not found"):
        run_episode(processor, {**row, "label": gone}, ["red"])


def test_cli_converts(data_root, tmp_path, capsys):
    root, _ = data_root
    out = tmp_path / "cli.jsonl"
    assert main(["data", "openrlhf", "--src", str(root / "train.jsonl"), "--out", str(out)]) == 0
    assert out.read_text() == (root / "orl.jsonl").read_text()
    assert main(["data", "openrlhf", "--src", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 1
    assert "none.jsonl" in capsys.readouterr().err
