"""The train stage: supervised fine-tuning on selected examples, LoRA or full, through TRL.

Why TRL's ``SFTTrainer`` and not a loop of our own: it is what users already run on GPUs, and
through ``transformers.Trainer`` it inherits ``accelerate launch`` (DDP/FSDP/DeepSpeed) without a
line here knowing how many processes there are. What this module adds is what the loop needs
and TRL does not keep: the assistant-turn-only loss on any chat template, a FLOPs count, a
per-step log, the resolved config, and resume after a kill. A resume is only allowed from
checkpoints made the same way: ``checkpoints/assay_identity.json`` records the data's sha256,
every result-changing setting and the model's file hashes, and a rerun that differs is refused.

Loss on the assistant turn only: each SFT row's chat is split into a conversational
prompt/completion pair and TRL's completion mask does the masking. That works with every chat
template, unlike ``assistant_only_loss``, which needs ``{% generation %}`` markers that most
templates (SmolLM2's included) do not have.

FLOPs (stored per step and in total), with ``F(T)`` the forward FLOPs of a T-token sequence from
:func:`assay.models.forward_flops` (2 x matmul params per token plus attention over the context):
- full fine-tuning: ``3 F(T)`` per sequence: forward, then backward to activations and to weights
  (the 6 x params x tokens rule, with attention counted);
- LoRA: ``2 F(T) + 6 N_lora T``: the frozen base runs forward and back-propagates to its
  activations but computes no weight gradients; the adapters (N_lora params) cost 6 per token;
- gradient checkpointing adds one more ``F(T)`` (the recomputed forward).
Only real tokens count, not padding; every token of the sequence counts (prompt included),
since the forward runs over all of them even though only the completion carries loss.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from assay.core.checks import at_least, fail, keyed, one_of
from assay.core.config import ConfigError, opt, parse_bool, save_yaml, to_mapping
from assay.core.hardware import DTYPES, resolve_dtype
from assay.core.hashing import sha256_file, short_hash
from assay.core.identity import FileHashes, check_identity, load_record, main_process, world_size
from assay.core.io import InputError, read_records, write_json
from assay.core.progress import interactive
from assay.core.records import SFTExample
from assay.core.registry import did_you_mean
from assay.models import DEFAULT_MODEL, check_model, forward_flops, load, model_identity, resolve, stats_for

METHODS = ("lora", "full")


@dataclass
class LoraOptions:
    r: int = opt(16, help="LoRA rank")
    alpha: int = opt(32, help="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = opt(0.0, help="dropout on the LoRA input")
    target_modules: list = opt(["all-linear"], help="modules that get adapters; 'all-linear' = every linear but the head")


def _legacy(data: dict, where: str) -> dict:
    """``bf16: true/false`` was the precision switch before ``dtype`` (and its ``auto``)."""
    if "bf16" in data:
        if "dtype" in data:
            raise ConfigError(where, "bf16", "'bf16' is the old name of 'dtype'; give only one of them")
        data["dtype"] = "bfloat16" if parse_bool(data.pop("bf16"), where, "bf16") else "float32"
    return data


@dataclass
class TrainConfig:
    INPUTS, OUTPUTS = ("data", "model"), ("out",)
    LEGACY = staticmethod(_legacy)
    data: str = opt("sft.jsonl", help="SFT JSONL from `assay select` (rows with `messages`)")
    out: str = opt("checkpoint", help="output folder: HF checkpoint, config, log, summary")
    model: str = opt(DEFAULT_MODEL, help="base model spec")
    method: str = opt("lora", help="lora or full")
    lora: LoraOptions = field(default_factory=LoraOptions, metadata={"help": "LoRA settings (method=lora)"})
    lr: float = opt(2e-4, help="peak learning rate (LoRA wants ~1e-4..5e-4, full fine-tuning ~1e-5..5e-5)")
    epochs: float = opt(2.0, help="passes over the data (ignored when max_steps > 0)")
    max_steps: int = opt(-1, help="stop after this many optimizer steps; -1 = use epochs")
    batch_size: int = opt(8, help="sequences per device per micro-batch")
    grad_accum: int = opt(1, help="micro-batches per optimizer step")
    max_length: int = opt(512, help="truncate sequences to this many tokens")
    warmup: float = opt(0.05, help="warmup: a fraction of the steps if < 1, else a step count")
    scheduler: str = opt("cosine", help="learning-rate schedule (transformers names: cosine, linear, constant, ...)")
    weight_decay: float = opt(0.0, help="AdamW weight decay")
    seed: int = opt(0, help="seed of initialisation, data order and dropout")
    dtype: str = opt("auto", help="compute dtype: bfloat16 (bf16 autocast over fp32 master weights), float32, or auto "
                                  "(bfloat16 where the hardware multiplies it, else float32); was 'bf16: true/false'")
    gradient_checkpointing: bool = opt(False, help="recompute activations in backward to save memory")
    merge: bool = opt(True, help="LoRA: save the merged model (loads like any HF model); the adapter is kept in adapter/")
    save_steps: int = opt(50, help="write a resumable checkpoint every this many steps")
    keep_checkpoints: int = opt(1, help="how many checkpoints to keep (0 = all; gradient selection reads each one's optimizer state)")
    logging_steps: int = opt(1, help="log loss, tokens and FLOPs every this many steps")
    trust_remote_code: bool = opt(False, help="allow custom model code from the model folder (off by default)")


def to_prompt_completion(ex: SFTExample, where: str) -> dict:
    """Split a chat at its last assistant turn: TRL masks the prompt part out of the loss."""
    msgs = ex.messages
    if not msgs or msgs[-1].get("role") != "assistant":
        raise InputError(f"{where}: field 'messages': the last turn must be the assistant's")
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def step_flops(lengths: list[int], stats, method: str, n_lora: int, checkpointing: bool) -> float:
    """Training FLOPs of one batch of sequences of these real lengths (see the module docstring)."""

    fwd = sum(forward_flops(stats, t) for t in lengths)
    tokens = sum(lengths)
    if method == "full":
        total = 3 * fwd
    else:
        total = 2 * fwd + 6 * n_lora * tokens
    return total + (fwd if checkpointing else 0.0)


def _last_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


class _Meter:
    """Counts the real tokens, loss tokens and FLOPs of every micro-batch the model trains on.

    It is fed from ``compute_loss`` (not the collator, which the dataloader runs a batch ahead),
    so a count logged at step s covers exactly steps 1..s. The counts are this process's; under
    ``accelerate launch`` each rank counts its own shard and the totals are summed at the end.
    """

    def __init__(self, stats, method: str, n_lora: int, checkpointing: bool):
        self.stats, self.method = stats, method
        self.n_lora, self.checkpointing = n_lora, checkpointing
        self.tokens = 0
        self.loss_tokens = 0
        self.flops = 0.0
        self.sequences = 0

    def count(self, batch) -> None:
        mask = batch.get("attention_mask")
        if mask is not None:
            lengths = [int(x) for x in mask.sum(dim=1).tolist()]
        else:
            lengths = [int(batch["input_ids"].shape[1])] * int(batch["input_ids"].shape[0])
        self.tokens += sum(lengths)
        self.sequences += len(lengths)
        if "labels" in batch:
            # Labels are shifted inside the model; -100 marks prompt and padding.
            self.loss_tokens += int((batch["labels"][:, 1:] != -100).sum())
        self.flops += step_flops(lengths, self.stats, self.method, self.n_lora, self.checkpointing)

    def state(self) -> dict:
        return {"tokens": self.tokens, "loss_tokens": self.loss_tokens, "flops": self.flops,
                "sequences": self.sequences}

    def load(self, d: dict) -> None:
        self.tokens, self.loss_tokens = int(d["tokens"]), int(d["loss_tokens"])
        self.flops, self.sequences = float(d["flops"]), int(d["sequences"])


def _trainer_class(meter: _Meter):
    from trl import SFTTrainer

    class MeteredSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                meter.count(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return MeteredSFTTrainer


def _make_callback(meter: _Meter, log_path: Path, t0: float):
    from transformers import TrainerCallback

    class AssayLog(TrainerCallback):
        """Appends one JSON line per logging step and saves the meter with every checkpoint."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            # Every rank logs at the same steps (the loss is gathered), so the counts of all ranks
            # are summed here, collectively, before rank 0 writes: one log of the whole job.
            tokens, loss_tokens, flops = _all_reduce_sum([meter.tokens, meter.loss_tokens, meter.flops])
            if not state.is_world_process_zero:
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
                   "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                   "tokens": int(tokens), "loss_tokens": int(loss_tokens), "flops": flops,
                   "elapsed_s": round(time.perf_counter() - t0, 3)}
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

        def on_save(self, args, state, control, **kw):
            # Every rank saves its own counts (they are summed across ranks at the end).
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.exists():
                write_json(ckpt / f"assay_meter.{args.process_index}.json", meter.state())

    return AssayLog()


def _truncate_log(log_path: Path, upto_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we restart from (they will be redone)."""
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= upto_step:
                keep.append(line)
        except (ValueError, KeyError):
            break  # a torn last line from a kill
    log_path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def _all_reduce_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    # NCCL (accelerate's backend on GPUs) reduces CUDA tensors only; gloo reduces CPU tensors.
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# Where the output goes and how often it is saved or logged do not change the trained weights.
_NOT_IDENTITY = ("out", "save_steps", "keep_checkpoints", "logging_steps", "trust_remote_code")
IDENTITY_FILE = "assay_identity.json"


def train_identity(cfg: TrainConfig, hashes: Optional[FileHashes] = None) -> dict:
    """What a training result depends on: the data's content, every result-changing setting, the
    model (with its files' hashes when local) and the number of processes (the effective batch)."""
    ident = {k: v for k, v in to_mapping(cfg).items() if k not in _NOT_IDENTITY}
    ident["dtype"] = train_dtype(cfg)  # what ran, not 'auto': a bf16 checkpoint never resumes as fp32
    ident["data"] = {"sha256": sha256_file(Path(cfg.data)) if Path(cfg.data).exists() else None}
    ident["model"] = model_identity(cfg.model, hashes)
    ident["world_size"] = world_size()
    return ident


def sft_args(cfg: TrainConfig, ckpt_dir: Path, dtype: str, progress: bool):
    """TRL's SFTConfig for ``cfg``, every setting that changes the run given explicitly: TRL's own
    defaults differ from transformers' (gradient checkpointing and bf16 on), and a default that
    recomputes activations unasked costs ~a third more compute than the FLOPs count says."""
    import dataclasses

    import torch
    from trl import SFTConfig

    # transformers renamed gradient_checkpointing (a deprecated alias that warns when set).
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    ckpt_key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args = SFTConfig(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        bf16=dtype == "bfloat16", fp16=dtype == "float16", **{ckpt_key: cfg.gradient_checkpointing},
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.keep_checkpoints or None, report_to="none",
        max_length=cfg.max_length, completion_only_loss=True, packing=False,
        disable_tqdm=not (progress and interactive()), dataset_num_proc=None, use_cpu=not torch.cuda.is_available(),
    )
    # transformers takes `accelerate launch --mixed_precision` (ACCELERATE_MIXED_PRECISION) unless
    # fp16/bf16 is on, so an fp32 run could silently train in bf16: the config decides, always.
    args.mixed_precision = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_dtype(cfg: TrainConfig) -> str:
    return resolve_dtype(cfg.dtype, "cuda" if _cuda() else "cpu")


def run_training(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train and save; returns the summary (also written to ``out/train_summary.json``).

    A finished output folder is returned as is; a killed run resumes from its last checkpoint.
    """
    out = Path(cfg.out)
    summary_path = out / "train_summary.json"
    ckpt_dir = out / "checkpoints"
    resume = _last_checkpoint(ckpt_dir)
    record = (load_record(ckpt_dir / IDENTITY_FILE) if resume is not None else None) or {}
    hashes = FileHashes(record.get("file_hashes"))
    ident = train_identity(cfg, hashes)
    if summary_path.exists():
        done = json.loads(summary_path.read_text(encoding="utf-8"))
        check_identity(str(out), done.get("identity"), ident, "already holds a model trained with another config",
                       f"choose another --out or delete {out} to train afresh")
        return done
    if resume is not None:
        # Checked before anything is loaded: resuming optimizer state, schedule and data order
        # made under other settings would train a model that no single config describes.
        check_identity(str(resume), record.get("identity"), ident, "is a checkpoint of a run with another config",
                       f"choose another --out or delete {ckpt_dir} to train afresh")
    if cfg.method not in METHODS:
        raise InputError(f"train.method '{cfg.method}' is not one of {', '.join(METHODS)}{did_you_mean(cfg.method, METHODS)}")
    if ident["dtype"] == "float16" and not _cuda():
        raise InputError("train.dtype 'float16': fp16 autocast runs on GPUs only; on a CPU use bfloat16 or float32")
    rows = read_records(cfg.data, SFTExample)
    if not rows:
        raise InputError(f"{cfg.data}: no training examples (if it came from `assay select`, "
                         f"{cfg.data}.funnel.json shows which step dropped them)")
    data = [to_prompt_completion(ex, f"{cfg.data}:{i + 1}") for i, ex in enumerate(rows)]

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed


    # Seed before anything random is built: the LoRA adapters are initialised outside the Trainer.
    set_seed(cfg.seed)
    path = resolve(cfg.model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    n_lora = 0
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets[0] if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    args = sft_args(cfg, ckpt_dir, ident["dtype"], progress)
    meter = _Meter(stats_for(cfg.model), cfg.method, n_lora, cfg.gradient_checkpointing)
    trainer = _trainer_class(meter)(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok)

    log_path = out / "train_log.jsonl"
    main = trainer.is_world_process_zero()  # under `accelerate launch`, one writer per file
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(out / "train_config.yaml", to_mapping(cfg))
        # Before the first checkpoint exists, so every checkpoint in the folder is described by it.
        write_json(ckpt_dir / IDENTITY_FILE, {"identity": ident, "file_hashes": hashes.entries})
    if resume is not None:
        if main:
            _truncate_log(log_path, int(resume.name.split("-")[-1]))
        saved = resume / f"assay_meter.{trainer.args.process_index}.json"
        if saved.exists():
            meter.load(json.loads(saved.read_text()))
        else:
            print(f"[assay] train: warning: {resume} has no token/FLOPs meter; counts restart at this checkpoint")
        print(f"[assay] train: resuming from {resume}")
    elif main and log_path.exists():
        log_path.unlink()
    t0 = time.perf_counter()
    trainer.add_callback(_make_callback(meter, log_path, t0))
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - t0
    tokens, loss_tokens, flops, seqs = _all_reduce_sum([meter.tokens, meter.loss_tokens, meter.flops, meter.sequences])

    summary: dict[str, Any] = {
        "model": cfg.model, "method": cfg.method, "examples": len(rows), "sequences": int(seqs),
        "epochs": cfg.epochs, "steps": trainer.state.global_step, "tokens": int(tokens),
        "loss_tokens": int(loss_tokens), "flops": flops, "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 and resume is None else None,
        "train_loss": result.training_loss, "n_params": stats_for(cfg.model).n_params,
        "n_trainable": n_trainable, "merged": cfg.method == "lora" and cfg.merge,
        "resumed_from": str(resume) if resume else None, "world_size": trainer.args.world_size,
        "dtype": ident["dtype"], "config_hash": short_hash(ident), "identity": ident,
    }
    _save_model(trainer, tok, cfg, out)
    if trainer.is_world_process_zero():
        write_json(summary_path, summary)  # written last: its presence means "finished"
    return summary


def _save_model(trainer, tok, cfg: TrainConfig, out: Path) -> None:
    """Save through the Trainer (it gathers sharded FSDP/DeepSpeed weights); merge on rank 0 only.

    LoRA with merge: the adapter goes to ``out/adapter`` and the merged model to ``out``, so the
    folder loads like any HF model. LoRA without merge: the adapter goes to ``out`` itself, which
    ``assay.models.load`` recognises (base from ``ASSAY_BASE``, adapter applied on load).
    """
    lora_dir = out / "adapter" if cfg.merge else out
    trainer.save_model(str(lora_dir if cfg.method == "lora" else out))
    if not trainer.is_world_process_zero():
        return
    if cfg.method == "lora":
        tok.save_pretrained(lora_dir)
        (lora_dir / "ASSAY_BASE").write_text(cfg.model + "\n")
        if cfg.merge:
            merged, _ = load(str(lora_dir), trust_remote_code=cfg.trust_remote_code)
            merged.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "ASSAY_BASE").write_text(cfg.model + "\n")


def cli_run(cfg: TrainConfig) -> int:
    s = run_training(cfg)
    if not main_process():
        return 0  # under `accelerate launch`, one process reports
    rate = f", {s['tokens_per_s']} tok/s" if s.get("tokens_per_s") else ""
    print(f"[assay] train ({s['method']}): {s['examples']} examples, {s['steps']} steps, {s['tokens']} tokens, "
          f"{s['flops']:.3g} FLOPs, loss {s['train_loss']:.4f}{rate} -> {cfg.out}")
    return 0



# transformers' SchedulerType values, so the common names need no transformers import (5 s);
# anything else is looked up in the installed transformers before it is refused.
_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
               "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
               "warmup_stable_decay")


def check(c: TrainConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    one_of(k("method"), c.method, METHODS, "training method")
    one_of(k("dtype"), c.dtype, [d for d in DTYPES if d != "float64"], "dtype")
    if c.scheduler not in _SCHEDULERS:
        from transformers.trainer_utils import SchedulerType

        one_of(k("scheduler"), c.scheduler, [s.value for s in SchedulerType], "learning-rate schedule")
    if c.lr <= 0:
        raise fail(k("lr"), f"must be positive, got {c.lr!r}")
    if "max_steps" not in skip and c.max_steps <= 0 and c.epochs <= 0:
        raise fail(k("epochs"), f"must be positive when max_steps is not set, got {c.epochs!r}")
    for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
        at_least(k(name), getattr(c, name), 1)
    at_least(k("keep_checkpoints"), c.keep_checkpoints, 0)
    at_least(k("lora.r"), c.lora.r, 1)
    if "model" not in skip:
        check_model(k("model"), c.model)
