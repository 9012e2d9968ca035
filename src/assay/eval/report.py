"""``assay report RUN_DIR``: a Markdown report and plots from what a run directory holds.

It reads only artifacts (the manifest, eval results, pool stats, the training log), never model
weights, so a report can be rebuilt anywhere the run directory is copied. Sections appear for
what exists: an eval-only run gets its metrics table, a full loop gets the before/after table
with the paired significance test, pass@k curves, the loss curve and FLOPs per stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from assay.core.config import opt
from assay.core.io import InputError
from assay.eval.stage import compare


@dataclass
class ReportConfig:
    POSITIONAL = "run_dir"
    run_dir: str = opt("runs/quickstart", help="the run directory to report on")


def _load(path: Path) -> Optional[Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _evals(d: Path) -> dict[str, dict]:
    return {p.parent.name: _load(p) for p in sorted(d.glob("*/result.json"))}


def _fmt_flops(x: float) -> str:
    return f"{x:.3g}" if x else "0"


def before_after_table(d: Path) -> str:
    """The quickstart's summary: held-out accuracy before and after, and what the training cost."""

    d = Path(d)
    cmp_ = compare(d / "eval_base", d / "eval_trained")
    train = _load(d / "trained" / "train_summary.json") or {}
    sel = _load(d / "sft.jsonl.funnel.json") or {}
    manifest = _load(d / "manifest.json") or {"stages": {}}
    base = _load(d / "eval_base" / "result.json")
    proto = base["protocol"]
    sample_flops = manifest["stages"].get("sample", {}).get("flops", 0.0)
    lo, hi = cmp_["gain_ci95"]
    rows = [
        ("held-out problems", f"{cmp_['n']} ({proto['benchmark'].split('/')[-1]}, protocol {proto['protocol_id']}, "
                              f"template {proto['template']}, greedy, max {proto['max_new_tokens']} tokens)"),
        ("base greedy pass@1", f"{cmp_['before']:.3f}"),
        ("trained greedy pass@1", f"{cmp_['after']:.3f}"),
        ("gain", f"{cmp_['gain']:+.3f} (95% CI {lo:+.3f} .. {hi:+.3f}; McNemar p = {cmp_['p_value']:.2g}; "
                 f"{cmp_['only_after']} fixed, {cmp_['only_before']} broken)"),
        ("training examples", f"{train.get('examples', sel.get('examples', '?'))} from {sel.get('problems', '?')} problems"),
        ("training tokens", f"{train.get('tokens', '?')} processed in {train.get('steps', '?')} steps "
                            f"({train.get('loss_tokens', '?')} with loss)" if train else "?"),
        ("sampling FLOPs", _fmt_flops(sample_flops)),
        ("training FLOPs", f"{_fmt_flops(train.get('flops', 0.0))} ({train.get('method', '?')})"),
    ]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def _save(fig, out: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out.name


def _plot_passk(d: Path, out: Path) -> Optional[str]:
    stats = _load(d / "pool_stats.json")
    if not stats:
        return None
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in stats["by_k"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [r["pass_at_k"] for r in stats["by_k"]], marker="o", label="pass@k")
    ax.plot(ks, [r["maj_at_k"] for r in stats["by_k"]], marker="s", label="maj@k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("fraction of pool problems")
    ax.set_title("Training pool: pass@k of the base model")
    ax.legend()
    return _save(fig, out)


def _plot_before_after(evals: dict[str, dict], out: Path) -> Optional[str]:
    pts = [(name, r["metrics"]) for name, r in evals.items() if "greedy_pass@1" in r["metrics"]]
    if not pts:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = range(len(pts))
    vals = [m["greedy_pass@1"] for _, m in pts]
    err = [[v - m["greedy_ci95"][0] for v, (_, m) in zip(vals, pts)], [m["greedy_ci95"][1] - v for v, (_, m) in zip(vals, pts)]]
    ax.bar(xs, vals, yerr=err, capsize=6, color=["#999999", "#2a7ab0", "#e08a1e", "#4a9a4a"][: len(pts)])
    ax.set_xticks(list(xs), [n for n, _ in pts])
    ax.set_ylabel("greedy pass@1 (95% CI)")
    ax.set_title("Held-out accuracy")
    return _save(fig, out)


def _plot_flops(stages: dict[str, dict], out: Path) -> Optional[str]:
    items = [(k, v.get("flops", 0.0)) for k, v in stages.items() if v.get("flops")]
    if not items:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2a7ab0")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs")
    ax.set_title("Compute per stage")
    return _save(fig, out)


def _plot_loss(d: Path, out: Path) -> Optional[str]:
    log = d / "trained" / "train_log.jsonl"
    if not log.exists():
        return None
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("Training loss")
    return _save(fig, out)


def write_report(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    d = Path(run_dir)
    manifest = _load(d / "manifest.json")
    if manifest is None:
        raise InputError(f"{d}: no manifest.json (not a run directory; pass --run-dir to a command or run a recipe)")
    stages = manifest.get("stages", {})
    evals = _evals(d)
    lines = [f"# assay run report: `{d}`", "", f"Created {manifest.get('created')}; packages: "
             + ", ".join(f"{k} {v}" for k, v in manifest.get("packages", {}).items() if v), ""]
    if (d / "eval_base").exists() and (d / "eval_trained").exists():
        lines += ["## Before / after", "", "```", before_after_table(d), "```", ""]
    if evals:
        lines += ["## Evaluations", "", "| eval | model | problems | protocol | metric | value |", "|---|---|---|---|---|---|"]
        for name, r in evals.items():
            for k, v in r["metrics"].items():
                if isinstance(v, (int, float)) and not k.endswith("correct"):
                    lines.append(f"| {name} | `{r['model']}` | {r['protocol']['n_problems']} | "
                                 f"{r['protocol']['protocol_id']} | {k} | {v:.4g} |")
        lines.append("")
    funnel = _load(d / "sft.jsonl.funnel.json")
    if funnel:
        lines += ["## Selection funnel", "", "| step | kept | dropped |", "|---|---|---|"]
        lines += [f"| {f['step']} | {f['kept']} | {f.get('dropped', '')} |" for f in funnel["funnel"]]
        lines.append("")
    lines += ["## Stages", "", "| stage | status | wall s | FLOPs | models |", "|---|---|---|---|---|"]
    for name, st in stages.items():
        lines.append(f"| {name} | {st.get('status')} | {st.get('wall_s', 0):.1f} | {_fmt_flops(st.get('flops', 0.0))} | "
                     f"{', '.join(st.get('models', []))} |")
    lines.append("")
    plots = [("pass@k on the training pool", _plot_passk(d, d / "plot_passk.png")),
             ("Held-out accuracy", _plot_before_after(evals, d / "plot_accuracy.png")),
             ("Training loss", _plot_loss(d, d / "plot_loss.png")),
             ("FLOPs per stage", _plot_flops(stages, d / "plot_flops.png"))]
    plots = [(t, f) for t, f in plots if f]
    if plots:
        lines += ["## Plots", ""] + [f"![{t}]({f})" for t, f in plots] + [""]
    lines += ["Inputs, outputs and their sha256 for every stage are in `manifest.json`; each stage's "
              "resolved config is there and beside its outputs.", ""]
    out = d / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def run_report(cfg: ReportConfig) -> Path:
    """Write ``<run_dir>/report.md``; its path."""
    return write_report(cfg.run_dir)


def cli_run(cfg: ReportConfig) -> int:
    print(f"[assay] report -> {run_report(cfg)}")
    return 0
