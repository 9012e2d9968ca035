"""LESS's machinery (Xia et al. 2024): projections, Adam preconditioning, per-example LoRA
gradients, resumable feature stores and the scores; ``assay.select.less`` is the selector on top.

Why its own module: the feature pass is the expensive part of LESS (one backward per example per
checkpoint) and the one that shards, so it can run on Ray (``executor: ray``) without the
selector, the select stage or training importing Ray. Pool features of a checkpoint are split
into contiguous row ranges, one Ray task each, every range in its own resumable store named by
its rows; the ranges are assembled in order into the checkpoint's store, then the range files
this run made are deleted. Per-example gradients do not depend on each other and the projection
is seeded, so the features are those a local pass computes.

The projection never materialises the d x D matrix: it is generated block by block from a seeded
generator (Rademacher entries +-1/sqrt(d)), so memory is d x block, and the same seed gives the
same matrix on every run and machine (TRAK's CPU projector spends minutes on random numbers;
this one makes d x D signs once per block, in torch, and reuses nothing between examples).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from assay.core.executor import RayOptions, map_shards, shard_count
from assay.core.hardware import resolve_dtype
from assay.core.progress import bar as progress_bar
from assay.data.prompts import render_ids
from assay.models import load, resolve, stats_for
from assay.train import step_flops


def _rows(x, in_dim: int, out_dim: int):
    """A projector's input as a float32 (rows x in_dim) matrix, whether it was one row, and zeros for the output."""
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    squeeze = x.dim() == 1
    x = x.reshape(1, -1) if squeeze else x
    if x.shape[1] != in_dim:
        raise ValueError(f"expected {in_dim} features, got {x.shape[1]}")
    return x, squeeze, torch.zeros(x.shape[0], out_dim)


class BlockProjector:
    """x (n x D) -> x P^T (n x d) with P a seeded Rademacher matrix scaled by 1/sqrt(d), in column blocks."""

    def __init__(self, in_dim: int, out_dim: int = 8192, seed: int = 0, block: int = 65536):
        if in_dim < 1 or out_dim < 1:
            raise ValueError("projection dimensions must be positive")
        self.in_dim, self.out_dim, self.seed, self.block = in_dim, out_dim, seed, block

    def _block(self, b: int, width: int):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
        signs = torch.randint(0, 2, (self.out_dim, width), generator=g, dtype=torch.int8)
        return (signs.to(torch.float32) * 2 - 1) / math.sqrt(self.out_dim)

    def __call__(self, x):
        x, squeeze, out = _rows(x, self.in_dim, self.out_dim)
        for b, start in enumerate(range(0, self.in_dim, self.block)):
            stop = min(start + self.block, self.in_dim)
            out += x[:, start:stop] @ self._block(b, stop - start).T
        return out[0] if squeeze else out


class SparseSignProjector:
    """A sparse JL sketch (Kane & Nelson; CountSketch when s=1): each input coordinate goes to ``s``
    seeded output coordinates with seeded signs, scaled by 1/sqrt(s).

    For LoRA gradients (millions of coordinates) a dense d x D matrix is out of reach on a CPU
    (8192 x 2.4M floats is 78 GB, and regenerating it per example is minutes of random numbers);
    this needs D x s indices and signs once (tens of MB) and O(D s) work per example.
    """

    def __init__(self, in_dim: int, out_dim: int = 8192, seed: int = 0, s: int = 4):
        import torch

        if in_dim < 1 or out_dim < 1 or s < 1:
            raise ValueError("projection dimensions and s must be positive")
        g = torch.Generator().manual_seed(seed)
        self.in_dim, self.out_dim, self.s = in_dim, out_dim, s
        self.index = torch.randint(0, out_dim, (s, in_dim), generator=g)
        self.sign = (torch.randint(0, 2, (s, in_dim), generator=g, dtype=torch.int8).to(torch.float32) * 2 - 1) / math.sqrt(s)

    def __call__(self, x):
        x, squeeze, out = _rows(x, self.in_dim, self.out_dim)
        for j in range(self.s):
            out.index_add_(1, self.index[j], x * self.sign[j])
        return out[0] if squeeze else out


def adam_precondition(g, m, v, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """LESS's training-example feature: the Adam update direction one step on g would take."""
    m2 = beta1 * m + (1 - beta1) * g
    v2 = beta2 * v + (1 - beta2) * g * g
    return m2 / (v2 ** 0.5 + eps)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def less_scores(train_feats: Sequence[np.ndarray], target_feats: Sequence[dict[str, np.ndarray]],
                lrs: Sequence[float]) -> np.ndarray:
    """Per training example: sum over checkpoints of lr x max over tasks of the mean cosine to the task.

    ``train_feats[c]`` is (n_train x d) at checkpoint c; ``target_feats[c][task]`` is (n_task x d).
    """
    if not (len(train_feats) == len(target_feats) == len(lrs)):
        raise ValueError("one train matrix, one target dict and one learning rate per checkpoint")
    total = None
    for tf, tasks, lr in zip(train_feats, target_feats, lrs):
        a = normalize_rows(np.asarray(tf, dtype=np.float64))
        per_task = [(a @ normalize_rows(np.asarray(t, dtype=np.float64)).T).mean(axis=1) for t in tasks.values()]
        s = lr * np.max(np.stack(per_task, axis=0), axis=0)
        total = s if total is None else total + s
    return total


def top_indices(scores: np.ndarray, n: Optional[int] = None, fraction: Optional[float] = None) -> list[int]:
    """Indices of the top-n (or top fraction) scores, best first; ties broken by index."""
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n or fraction")
    k = n if n is not None else max(1, math.ceil(fraction * len(scores)))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:k]


class FeatureStore:
    """Features on disk as a float32 memmap (n x d) with a count of finished rows beside it.

    Rows are written in order and the count is updated after they are flushed, so a killed run
    resumes at the first unfinished row and never recomputes or half-writes one.
    """

    def __init__(self, path: str, n: int, d: int):
        from pathlib import Path

        self.path, self.n, self.d = Path(path), n, d
        self.count_path = self.path.with_name(self.path.name + ".done")
        mode = "r+" if self.path.exists() else "w+"
        self.array = np.lib.format.open_memmap(self.path, mode=mode, dtype=np.float32, shape=(n, d))
        if self.array.shape != (n, d):
            raise ValueError(f"{self.path}: holds a {self.array.shape} array, expected {(n, d)}")
        self.done = int(self.count_path.read_text()) if self.count_path.exists() else 0

    def write(self, start: int, rows: np.ndarray) -> None:
        if start != self.done:
            raise ValueError(f"rows must be written in order: next is {self.done}, got {start}")
        self.array[start:start + len(rows)] = rows
        self.array.flush()
        self.done = start + len(rows)
        tmp = self.count_path.with_name(self.count_path.name + ".tmp")
        tmp.write_text(str(self.done))
        tmp.replace(self.count_path)


def extract_features(model, examples: Sequence[tuple], store: FeatureStore, projector, moments=None,
                     flush_every: int = 16, progress: bool = True, dtype: str = "float32") -> FeatureStore:
    """Per-example LoRA gradient -> (Adam-preconditioned with ``moments`` = (m, v) if given) -> projection.

    ``examples`` are (input_ids, labels) pairs; work resumes at ``store.done``. ``dtype=bfloat16``
    runs the forward and backward under bf16 autocast (the gradients stay fp32, as the weights).
    """

    params = [p for p in model.parameters() if p.requires_grad]
    buf, start = [], store.done
    shown = progress_bar(len(examples), "features", "example", initial=store.done, enabled=progress)
    for i in range(store.done, len(examples)):
        g = lora_gradient(model, *examples[i], params=params, dtype=dtype)
        if moments is not None:
            g = adam_precondition(g, *moments)
        buf.append(projector(g.detach()).numpy())
        if len(buf) >= flush_every:
            store.write(start, np.stack(buf))
            start, buf = start + len(buf), []
        shown.update(1)
    shown.close()
    if buf:
        store.write(start, np.stack(buf))
    return store


def enable_checkpointing(model) -> None:
    """Recompute activations in backward: per-example gradients of long chains in bounded memory.

    Activation memory then grows with one layer's activations instead of all layers'; the cost is
    one more forward pass per example (see benchmarks/RESULTS.md for the measured limits).
    """
    # transformers renamed it (the old name is a deprecated alias, removed in v6).
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # transformers only checkpoints in training mode; the models here have no dropout, so train
    # mode changes nothing else (a LoRA dropout > 0 would make features random: keep it at 0).
    model.train()
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    model.config.use_cache = False


def lora_gradient(model, input_ids, labels, params: Optional[Iterable] = None, dtype: str = "float32"):
    """Flat gradient of one example's mean completion loss w.r.t. the trainable (LoRA) parameters."""
    import torch

    params = [p for p in (params or model.parameters()) if p.requires_grad]
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device.type
    dtype = resolve_dtype(dtype, device)
    with torch.autocast(device, dtype=getattr(torch, dtype), enabled=dtype in ("bfloat16", "float16")):
        out = model(input_ids=torch.as_tensor(input_ids).reshape(1, -1), labels=torch.as_tensor(labels).reshape(1, -1))
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


# ---- the selection driver: warmup -> features per checkpoint -> LESS scores -> top examples ----------

def tokenize_example(tok, messages: list[dict], max_length: int) -> tuple:
    """(input_ids, labels) with the loss on the last (assistant) turn only, as in training."""
    import torch


    prompt = render_ids(messages[:-1], tok)
    full = tok.apply_chat_template(messages, tokenize=True) if getattr(tok, "chat_template", None) else \
        tok("\n\n".join(m["content"] for m in messages))["input_ids"]
    full = list(full["input_ids"] if hasattr(full, "keys") else full)[:max_length]
    n_prompt = min(len(prompt), len(full) - 1)
    labels = [-100] * n_prompt + full[n_prompt:]
    return torch.tensor(full), torch.tensor(labels)


def checkpoint_moments(ckpt, params) -> tuple:
    """(m, v) flattened in ``params`` order from a Trainer checkpoint's AdamW state, shape-checked."""
    import torch

    state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)["state"]
    ms, vs = [], []
    if len(state) != len(params):
        raise ValueError(f"{ckpt}: optimizer state has {len(state)} tensors, the adapter {len(params)}")
    for i, p in enumerate(params):
        st = state[i]
        if st["exp_avg"].shape != p.shape:
            raise ValueError(f"{ckpt}: optimizer state {i} has shape {tuple(st['exp_avg'].shape)}, "
                             f"parameter has {tuple(p.shape)}")
        ms.append(st["exp_avg"].reshape(-1))
        vs.append(st["exp_avg_sq"].reshape(-1))
    return torch.cat(ms), torch.cat(vs)


def checkpoint_lr(ckpt) -> float:
    """The learning rate logged at (or last before) the checkpoint's step."""
    import json

    state = json.loads((ckpt / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state.get("log_history", []) if "learning_rate" in h]
    return float(lrs[-1]) if lrs else 1.0


def _adapter_model(model_spec: str, ck: Path, checkpointing: bool):
    """The base model with checkpoint ``ck``'s LoRA adapter, trainable, and its LoRA parameters."""
    from peft import PeftModel

    base, _ = load(model_spec)
    model = PeftModel.from_pretrained(base, ck, is_trainable=True)
    if checkpointing:
        enable_checkpointing(model)
    return model, [p for p in model.parameters() if p.requires_grad]


def _feature_shard(job: dict) -> str:
    """One row range of a checkpoint's pool features, in a Ray worker, into its own resumable store."""
    ck = Path(job["ckpt"])
    model, params = _adapter_model(job["model"], ck, job["checkpointing"])
    proj = SparseSignProjector(sum(p.numel() for p in params), job["dim"], seed=job["seed"])
    extract_features(model, job["rows"], FeatureStore(job["path"], len(job["rows"]), job["dim"]), proj,
                     moments=checkpoint_moments(ck, params), progress=False, dtype=job["dtype"])
    return job["path"]


def _sharded_features(o: RayOptions, store: "FeatureStore", rows: list, job: dict) -> None:
    """Fill ``store`` from contiguous row ranges computed as Ray tasks (module docstring)."""
    n = min(shard_count(o), len(rows) - store.done)
    bounds = np.linspace(store.done, len(rows), n + 1).astype(int)
    shard_dir = store.path.with_name(store.path.name + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs = [{**job, "rows": rows[a:b], "path": str(shard_dir / f"rows-{a}-{b}.npy"), "start": int(a)}
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for j, path in zip(jobs, map_shards(o, _feature_shard, jobs)):
        store.write(j["start"], np.load(path, mmap_mode="r"))
    for j in jobs:  # only the range files this run made
        for f in (Path(j["path"]), Path(j["path"] + ".done")):
            f.unlink(missing_ok=True)
    try:
        shard_dir.rmdir()
    except OSError:
        pass


def gradient_scores(model_spec: str, pool: list, targets: dict[str, list], warmup_dir, dim: int, seed: int,
                    max_length: int, out_dir, progress: bool = True, checkpointing: bool = False,
                    dtype: str = "float32", executor: Optional[RayOptions] = None) -> tuple[np.ndarray, dict]:
    """LESS scores of ``pool`` (SFTExample rows) against ``targets`` (task -> rows), using the warmup
    run's checkpoints in ``warmup_dir/checkpoints``; features are stored (and resumed) in ``out_dir``.

    Returns (scores, cost): cost counts the gradients, their tokens and FLOPs, each gradient costing
    what one LoRA training sequence does (:func:`assay.train.step_flops`). ``executor``: Ray options
    to compute the pool's features as Ray tasks (module docstring); None computes them here."""
    from transformers import AutoTokenizer

    ckpts = sorted((Path(warmup_dir) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not ckpts:
        raise ValueError(f"{warmup_dir}: no checkpoints from the warmup run")
    tok = AutoTokenizer.from_pretrained(resolve(model_spec))
    pool_ex = [tokenize_example(tok, r.messages, max_length) for r in pool]
    target_ex = {t: [tokenize_example(tok, r.messages, max_length) for r in rows] for t, rows in targets.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_feats, target_feats, lrs = [], [], []
    lengths = [len(ids) for ids, _ in pool_ex] + [len(ids) for exs in target_ex.values() for ids, _ in exs]
    stats, flops = stats_for(model_spec), 0.0
    for ck in ckpts:
        model, params = _adapter_model(model_spec, ck, checkpointing)
        D = sum(p.numel() for p in params)
        proj = SparseSignProjector(D, dim, seed=seed)
        store = FeatureStore(str(out_dir / f"{ck.name}.train.npy"), len(pool_ex), dim)
        if executor is not None and store.done < len(pool_ex):
            _sharded_features(executor, store, pool_ex, {"model": model_spec, "ckpt": str(ck), "dim": dim, "seed": seed,
                                                         "checkpointing": checkpointing, "dtype": dtype})
        else:
            extract_features(model, pool_ex, store, proj, moments=checkpoint_moments(ck, params), progress=progress,
                             dtype=dtype)
        train_feats.append(np.asarray(store.array))
        tf = {}
        for t, exs in target_ex.items():
            st = extract_features(model, exs, FeatureStore(str(out_dir / f"{ck.name}.target.{t}.npy"), len(exs), dim),
                                  proj, progress=progress, dtype=dtype)
            tf[t] = np.asarray(st.array)
        target_feats.append(tf)
        lrs.append(checkpoint_lr(ck))
        flops += sum(step_flops([t], stats, "lora", D, checkpointing) for t in lengths)
    cost = {"checkpoints": len(ckpts), "gradients": len(ckpts) * len(lengths), "tokens": len(ckpts) * sum(lengths),
            "flops": flops}
    return less_scores(train_feats, target_feats, lrs), cost
