"""The report of ``assay study cft``: the arms, their validation curves, and how the data was made."""

from __future__ import annotations


def _gain(res: dict, ref: str) -> str:
    g = res.get(f"vs_{ref}")
    if not g:
        return ""
    lo, hi = g["gain_ci95"]
    return f"{g['gain']:+.3f} ({lo:+.3f}..{hi:+.3f}), p={g['p_value']:.2g}"


def arms_table(out: dict) -> list[str]:
    lines = ["| arm | rows | train tokens | step chosen | held-out target | vs base | vs SFT | transfer | vs base "
             "| vs SFT |", "|---|---:|---:|---:|---:|---|---|---:|---|---|"]
    for name, a in out["arms"].items():
        if "skipped" in a:
            lines.append(f"| {name} | 0 | | (not trained: {a['skipped']}) | | | | | | |")
            continue
        h, t = a["heldout"], a["transfer"]
        lines.append(f"| {name} | {a['examples']} | {a.get('train_tokens', 0)} | {a['chosen_step']} | {h['greedy_pass@1']:.3f} | {_gain(h, 'base')} "
                     f"| {_gain(h, 'SFT')} | {t['greedy_pass@1']:.3f} | {_gain(t, 'base')} | {_gain(t, 'SFT')} |")
    return lines


def rows_note(out: dict) -> list[str]:
    """Equal steps are not equal rows: say so when the arms' datasets differ in size."""
    rows = {n: a["examples"] for n, a in out["arms"].items() if n != "base" and "skipped" not in a}
    if len(set(rows.values())) <= 1:
        return []
    return ["", "The arms' datasets differ in size (" + ", ".join(f"{n} {r} rows" for n, r in rows.items())
            + "): every arm still takes the same optimizer steps, so the smaller sets are seen more often."]


def curve_table(out: dict) -> list[str]:
    steps = list(range(0, out["train_steps"] + 1, out["eval_every"]))
    base = out["arms"]["base"]["curve"]
    lines = ["| arm | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---:|" * len(steps)]
    for name, a in out["arms"].items():
        if name == "base" or "skipped" in a:
            continue
        curve = {int(k): v for k, v in a["curve"].items()}
        curve[0] = base.get(0, base.get("0"))
        lines.append(f"| {name} | " + " | ".join(f"{curve[s]:.3f}" for s in steps) + " |")
    return lines


def confusion_table(conf: dict) -> list[str]:
    lines = ["| teacher | correct: right | correct: wrong | incorrect: right | incorrect: wrong | unparsed | "
             "agreement |", "|---|---:|---:|---:|---:|---:|---:|"]
    for t, c in conf.items():
        unp = c["correct"]["unparsed"] + c["incorrect"]["unparsed"]
        agree = f"{c['agreement']:.2f}" if c["agreement"] is not None else "-"
        lines.append(f"| {t} | {c['correct']['right']} | {c['correct']['wrong']} | {c['incorrect']['right']} | "
                     f"{c['incorrect']['wrong']} | {unp} | {agree} |")
    return lines


def funnel_line(summary: dict) -> str:
    return " -> ".join(f"{f['step']} {f['kept']}" for f in summary["funnel"])


def format_report(out: dict) -> str:
    info, sizes = out["data"], out["sizes"]
    seeds = info["seeds"]
    chosen = ", ".join(f"{p} (student pass rate {seeds['rates'][p]:.2f})" for p in seeds["chosen"])
    lines = ["# CFT study: one problem's critiques vs SFT on its solutions vs multi-problem CFT", "",
             f"Student {out['student']}; every arm trains {out['train_steps']} optimizer steps; a checkpoint every "
             f"{out['eval_every']} steps is scored on {sizes['validation']} validation problems and the best one "
             f"(ties: the later) on {sizes['heldout']} held-out target problems and {sizes['transfer']} transfer "
             f"problems, greedy, template {out['template']}. Gains are paired (95% CI, McNemar p).", "",
             *arms_table(out), *rows_note(out), "", "Validation accuracy over training steps:", "", *curve_table(out), "",
             f"Seed problem: {chosen}, chosen among {len(seeds['rates'])} by {seeds['student']}'s pass rate over "
             f"{seeds['tries']} tries (band {seeds['band']}).", "",
             "Solutions of the seed problem: " + ", ".join(f"{g} {v['solutions']} ({v['correct']} correct)"
                                                         for g, v in info["solutions"]["by_generator"].items())
             + f"; {info['solutions']['duplicates']} duplicates dropped.", "",
             f"One-shot critiques ({', '.join(out['teachers'])}): {funnel_line(info['oneshot'])}; mean critique "
             f"{info['oneshot']['mean_critique_tokens'] or 0:.0f} tokens.", "",
             *confusion_table(info["oneshot"]["confusion"]), "",
             f"Multi-problem critiques: {funnel_line(info['multi'])}.", "",
             *confusion_table(info["multi"]["confusion"]), ""]
    return "\n".join(lines) + "\n"
