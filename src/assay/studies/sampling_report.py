"""The sampling study's report: the side-by-side table, the paper's findings row by row, plots.

Kept apart from ``assay.studies.sampling`` (the stages) so the report can be rebuilt from a
``study.json`` alone: ``write_study_report(run_dir, json.load(open(run_dir / "study.json")))``.
"""

from __future__ import annotations

import math
from pathlib import Path


def format_table(results: dict) -> str:
    wc, se = results["WC"], results["SE"]
    rows = [("model", wc["model"], se["model"]),
            ("parameters (matmul)", f"{wc['n_params']:.4g}", f"{se['n_params']:.4g}"),
            ("samples per problem", f"{wc['budget']['k_min']}-{wc['budget']['k_max']}",
             f"{se['budget']['k_min']}-{se['budget']['k_max']}"),
            ("realized FLOPs", f"{wc['budget']['realized_flops']:.4g}", f"{se['budget']['realized_flops']:.4g}"),
            ("sample accuracy", f"{wc['accuracy']:.3f}", f"{se['accuracy']:.3f}"),
            (f"coverage@k (k={wc['k_min']} / {se['k_min']})", f"{wc['curve'][-1]['coverage']:.3f}" if wc["curve"] else "-",
             f"{se['curve'][-1]['coverage']:.3f}" if se["curve"] else "-"),
            ("diversity@k (distinct correct / problem)", f"{wc['curve'][-1]['diversity']:.3f}" if wc["curve"] else "-",
             f"{se['curve'][-1]['diversity']:.3f}" if se["curve"] else "-")]
    f = [results[t].get("fpr") or {} for t in ("WC", "SE")]
    rows.append(("false-positive rate (judged)", *[
        (f"{x['fpr']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}] n={x['judged']}" if x.get("fpr") is not None
         else x.get("note", "not judged")) for x in f]))
    agr = [results[t].get("judge_agreement") or {} for t in ("WC", "SE")]
    if any(a.get("n") for a in agr):
        rows.append(("judge vs human labels", *[
            (f"agree {a['agreement']:.2f} kappa {a['kappa']:.2f} n={a['n']} (human FPR {a['human_fpr']:.2f})"
             if a.get("agreement") is not None and a.get("kappa") is not None else
             f"n={a.get('n', 0)}" + (f" agree {a['agreement']:.2f}" if a.get("agreement") is not None else ""))
            for a in agr]))
    ratio = wc["budget"]["realized_flops"] / se["budget"]["realized_flops"] if se["budget"]["realized_flops"] else float("nan")
    rows.append(("FLOPs ratio WC / SE", f"{ratio:.4f}", ""))
    w = max(len(r[0]) for r in rows)
    w1 = max(len(str(r[1])) for r in rows)
    lines = [f"{'':<{w}}  {'WC':<{w1}}  SE"] + [f"{a:<{w}}  {b:<{w1}}  {c}" for a, b, c in rows]
    if "students" in results:
        lines += ["", "setup (student)                                  base   WC data  SE data  WC - SE (95% CI), p"]
        for setup, r in results["students"].items():
            wcr, ser = r["WC"], r["SE"]
            if "skipped" in wcr or "skipped" in ser:
                lines.append(f"{setup} ({r['student']})".ljust(49) + f"{r['base']:.3f}  no data to train on")
                continue
            v = wcr.get(f"vs_{setup}.SE", {})
            lo, hi = v.get("gain_ci95", [float("nan")] * 2)
            lines.append(f"{setup} ({r['student']})".ljust(49) + f"{r['base']:.3f}  {wcr['greedy_pass@1']:.3f}    "
                         f"{ser['greedy_pass@1']:.3f}    {v.get('gain', float('nan')):+.3f} ({lo:+.3f} .. {hi:+.3f}), "
                         f"p={v.get('p_value', float('nan')):.2g}")
    return "\n".join(lines)


def paper_rows(results: dict) -> list[tuple[str, str, str]]:
    """The paper's findings, each against what this run measured: (finding, measured, verdict).

    A finding reproduces when the difference has the paper's sign and its 95% interval excludes
    zero; "same direction, not significant" and "opposite" are said as such."""

    def verdict(diff, ci) -> str:
        if diff is None or ci is None:
            return "not measured"
        if ci[0] > 0:
            return "reproduces"
        if ci[1] < 0:
            return "opposite (significant)"
        if diff == 0:
            return "not reproduced (no difference)"
        return "same direction, not significant" if diff > 0 else "not reproduced (opposite direction, n.s.)"

    out = []
    pr = results.get("paired", {})
    c = pr.get("coverage_wc_minus_se")
    if c:
        out.append(("WC has higher coverage at matched compute",
                    f"{c['after']:.3f} vs {c['before']:.3f}, diff {c['gain']:+.3f} ({c['gain_ci95'][0]:+.3f} .. "
                    f"{c['gain_ci95'][1]:+.3f}), McNemar p={c['p_value']:.2g}", verdict(c["gain"], c["gain_ci95"])))
    dv = pr.get("diversity_wc_minus_se")
    if dv and dv.get("diff") is not None:
        out.append(("WC has higher diversity (distinct correct per problem)",
                    f"diff {dv['diff']:+.3f} ({dv['ci95'][0]:+.3f} .. {dv['ci95'][1]:+.3f})",
                    verdict(dv["diff"], dv["ci95"])))
    fw, fs = (results[t].get("fpr") or {} for t in ("WC", "SE"))
    if fw.get("fpr") is not None and fs.get("fpr") is not None:
        # Two independent proportions: the normal interval of their difference.
        n1, n2 = fw["judged"], fs["judged"]
        d = fw["fpr"] - fs["fpr"]
        half = 1.96 * math.sqrt(fw["fpr"] * (1 - fw["fpr"]) / n1 + fs["fpr"] * (1 - fs["fpr"]) / n2)
        out.append(("WC has a higher false-positive rate",
                    f"{fw['fpr']:.3f} (n={n1}) vs {fs['fpr']:.3f} (n={n2}), diff {d:+.3f} ({d - half:+.3f} .. "
                    f"{d + half:+.3f}), judged by the LLM judge", verdict(d, [d - half, d + half])))
    names = {"knowledge_distillation": "KD: a student trains better on WC data",
             "self_improvement": "self-improvement: WC trains better on its own data than on SE's",
             "weak_to_strong": "weak-to-strong: SE trains better on WC data than on its own"}
    for setup, r in (results.get("students") or {}).items():
        v = (r.get("WC") or {}).get(f"vs_{setup}.SE")
        if not v:
            out.append((names[setup], "no data to train on", "not measured"))
            continue
        out.append((names[setup], f"{r['WC']['greedy_pass@1']:.3f} vs {r['SE']['greedy_pass@1']:.3f} (base "
                    f"{r['base']:.3f}), diff {v['gain']:+.3f} ({v['gain_ci95'][0]:+.3f} .. {v['gain_ci95'][1]:+.3f}), "
                    f"p={v['p_value']:.2g}", verdict(v["gain"], v["gain_ci95"])))
    return out


def write_study_report(d: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for tag, style in (("WC", "o-"), ("SE", "s-")):
        c = results[tag]["curve"]
        axes[0].plot([r["flops_per_problem"] for r in c], [r["coverage"] for r in c], style, label=f"{tag} {results[tag]['model']}")
        axes[1].plot([r["flops_per_problem"] for r in c], [r["diversity"] for r in c], style, label=tag)
    axes[0].set_xlabel("sampling FLOPs per problem")
    axes[0].set_ylabel("coverage@k")
    axes[1].set_xlabel("sampling FLOPs per problem")
    axes[1].set_ylabel("diversity@k (distinct correct)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(d / "plot_coverage_diversity.png", dpi=110)
    plt.close(fig)
    plots = ["![coverage and diversity vs FLOPs](plot_coverage_diversity.png)"]
    judged = [(t, results[t]["fpr"]) for t in ("WC", "SE") if (results[t].get("fpr") or {}).get("fpr") is not None]
    if judged:
        fig, ax = plt.subplots(figsize=(4, 3.2))
        vals = [f["fpr"] for _, f in judged]
        err = [[v - f["ci95"][0] for v, (_, f) in zip(vals, judged)], [f["ci95"][1] - v for v, (_, f) in zip(vals, judged)]]
        ax.bar([f"{t} (n={f['judged']})" for t, f in judged], vals, yerr=err, capsize=6, color=["#2a7ab0", "#e08a1e"][: len(judged)])
        ax.set_ylabel("false-positive rate (95% CI)")
        fig.tight_layout()
        fig.savefig(d / "plot_fpr.png", dpi=110)
        plt.close(fig)
        plots.append("![false-positive rate](plot_fpr.png)")
    findings = ["| the paper's finding | measured here | |", "|---|---|---|"] + [
        f"| {a} | {b} | {c} |" for a, b, c in paper_rows(results)]
    lines = ["# Compute-matched sampling study", "", "```", format_table(results), "```", "", *findings, "", *plots, "",
             "Both arms sample the same problems; the budget is enforced on realized FLOPs (see plan.json and "
             "*.samples.jsonl.budget.json). Per-stage inputs, outputs and FLOPs are in manifest.json.", ""]
    (d / "report.md").write_text("\n".join(lines), encoding="utf-8")
