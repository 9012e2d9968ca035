"""The synthesis study's cost ledger (from its run directory) and report."""

from __future__ import annotations

import json
from pathlib import Path

from assay.synth.ledger import dollars, ledger


def _summary(path) -> dict:
    return json.loads(Path(str(path) + ".summary.json").read_text())


def costs(d: Path, made: dict, gated: dict, synth_training: dict, choice: dict, prices: dict = None) -> dict:
    """Each source's FLOPs per kept problem (and dollars, where its model has a price), and each
    synthesizer's fixed cost and break-even pool size."""
    side = {}
    for tag in made:
        s, g = _summary(made[tag]), _summary(gated[tag])
        side[tag] = {"flops": s["flops"], "gate_flops": g["solver_flops"], "kept": g["kept"]}
        usd = dollars(s.get("prompt_tokens", 0), s.get("completion_tokens", 0), (prices or {}).get(s["model"]))
        if usd is not None:
            side[tag].update(dollars=usd, dollars_per_kept=usd / g["kept"] if g["kept"] else None)
    distill = _summary(d / "distill.synth.jsonl")["flops"] + synth_training["distilled"]
    fixed = {"synth": {"distill_calls_and_training": distill},
             "boosted": {"distill_calls_and_training": distill, "less": choice["cost"]["flops"],
                         "boost_calls": _summary(d / "boosted-teacher.synth.jsonl")["flops"],
                         "boost_training": synth_training["boosted"]},
             "random-boost": {"distill_calls_and_training": distill,
                              "boost_calls": _summary(d / "random-boost-teacher.synth.jsonl")["flops"],
                              "boost_training": synth_training["random-boost"]}}
    return ledger(side["teacher"], {k: v for k, v in side.items() if k != "teacher"}, fixed)


def _gain(r: dict, key: str = "") -> str:
    g = r.get(key) if key else r
    if not g or "gain" not in g:
        return ""
    lo, hi = g["gain_ci95"]
    return f"{g['gain']:+.3f} ({lo:+.3f}..{hi:+.3f}), p={g['p_value']:.2g}"


def _break_even(s: dict, be) -> str:
    if s["flops_per_kept"] is None:
        return "none (no problem kept)"
    return f"{be:.0f} problems" if be else "never (not cheaper per problem)"


def format_report(out: dict) -> str:
    lines = ["# Synthesis study: distilled synthesizer vs teacher vs real problems", "",
             f"Student {out['student']}, {out['train_steps']} optimizer steps on N = {out['n']} problems per arm "
             f"(fewer where fewer passed the gates); greedy pass@1 on {out['heldout']} held-out target problems. "
             f"Teacher {out['teacher']}; synthesizer distilled from it into {out['synthesizer']}.", "",
             "| data | rows | greedy pass@1 | gain vs base (95% CI, McNemar p) | vs real-N |", "|---|---:|---:|---|---|"]
    for name, r in out["results"].items():
        if name == "base":
            lines.append(f"| base model | 0 | {r['greedy_pass@1']:.3f} | | |")
        elif "skipped" in r:
            lines.append(f"| {name} | 0 | (not trained: {r['skipped']}) | | |")
        else:
            lines.append(f"| {name} | {r['examples']} | {r['greedy_pass@1']:.3f} | {_gain(r)} | {_gain(r, 'vs_real-N')} |")
    c = out["costs"]
    lines += ["", "Cost per kept problem (FLOPs: everything written, the gates' solver included, over what passed):", "",
              "| source | written | gates | kept | FLOPs per kept | fixed cost | break-even pool |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in c.items():
        per = f"{s['flops_per_kept']:.3g}" if s["flops_per_kept"] else "-"
        fixed = f"{s['fixed_flops']:.3g}" if "fixed_flops" in s else ""
        be = s.get("break_even_pool")
        lines.append(f"| {name} | {s['flops']:.3g} | {s['gate_flops']:.3g} | {s['kept']} | {per} | {fixed} | "
                     f"{'' if name == 'teacher' else _break_even(s, be)} |")
    priced = {n: v for n, v in c.items() if v.get("dollars") is not None}
    if priced:
        lines += ["", "Dollars (writing only, at the given prices): " + ", ".join(
            f"{n} ${v['dollars']:.4g} (${v['dollars_per_kept']:.3g} per kept)" if v.get("dollars_per_kept")
            else f"{n} ${v['dollars']:.4g}" for n, v in priced.items())]
    lines += ["", "Well-formed outputs and the gates:", "", "| source | outputs | well-formed | " +
              " | ".join(f["step"] for f in next(iter(out["funnels"].values()))[1:]) + " |",
              "|---|---:|---:|" + "---:|" * (len(next(iter(out["funnels"].values()))) - 1)]
    for tag, funnel in out["funnels"].items():
        w = out["wellformed"][tag]
        lines.append(f"| {tag} | {w['calls']} | {w['kept']} | " + " | ".join(str(f["kept"]) for f in funnel[1:]) + " |")
    lines += ["", f"Boosting seeds chosen by LESS: {', '.join(out['choice']['less'])}; at random: "
              f"{', '.join(out['choice']['random'])}."]
    return "\n".join(lines) + "\n"
