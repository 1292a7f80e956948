"""Answer prompts per benchmark, as lmms-eval asks them (its tasks' default ``post_prompt``).

The one place that says what the model is asked: rollout (turn 1 of an episode), the trajectory
labels (the base model at low and full res), SFT (turn 1 of a trajectory) and eval all build the
question text with ``asked_question``, so the policy sees one prompt in every stage.

The key is the sample's benchmark (``meta.source``, set by ``awares-rl data convert``; a
trajectory's ``benchmark``); a sample without one falls back on its metric. The synthetic
benchmark has neither a source nor a prompted metric: its question is asked as is.
"""

from __future__ import annotations

from awares_rl.core.sample import Sample

SINGLE_WORD = "\nAnswer the question using a single word or phrase."
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."

# benchmark (meta.source) -> the text after the question (lmms-eval's default post_prompt)
ANSWER_PROMPTS: dict[str, str] = {
    "chartqa": SINGLE_WORD,
    "docvqa": SINGLE_WORD,
    "infovqa": SINGLE_WORD,
    "textvqa": SINGLE_WORD,
    "pope": SINGLE_WORD,
    "ocrbench": "",  # lmms-eval asks the question as is
    "realworldqa": "",  # its questions carry their own instruction ("Please answer directly ...")
    "vstar": OPTION_LETTER,
}
# metric -> post prompt, for a sample without a known benchmark
METRIC_PROMPTS: dict[str, str] = {"anls": SINGLE_WORD, "relaxed": SINGLE_WORD, "vqa": SINGLE_WORD}


def answer_prompt(benchmark: str | None, metric: str | None) -> str:
    """The text asked after the question: the benchmark's, else the metric's, else none."""
    if benchmark in ANSWER_PROMPTS:
        return ANSWER_PROMPTS[benchmark]
    return METRIC_PROMPTS.get(metric or "", "")


def asked_question(question: str, benchmark: str | None = None, metric: str | None = None) -> str:
    """The question as the model is asked it: the question, then its answer prompt."""
    return question + answer_prompt(benchmark, metric)


def benchmark_of(sample: Sample) -> str | None:
    """The benchmark a sample comes from (``meta.source``), None when unknown (or no meta)."""
    source = (getattr(sample, "meta", None) or {}).get("source")
    return source if isinstance(source, str) else None


def sample_question(sample: Sample) -> str:
    """``asked_question`` of a Sample (or any record with ``question``, ``metric``, ``meta``)."""
    return asked_question(sample.question, benchmark_of(sample), getattr(sample, "metric", None))
