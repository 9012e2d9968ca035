"""The cost ledger of synthetic data: FLOPs (and dollars) per kept problem, and the break-even pool.

A distilled synthesizer pays a fixed cost up front (the teacher calls it is distilled from, its
training, and any value selection and boosting), then writes each problem for a small model's
cost; the teacher pays its full cost for every problem. Each side's cost per *kept* problem counts
every output it wrote (kept or rejected by the gates) plus the gates' own compute (the solver), so
the break-even pool size is where ``fixed + P * synth_per_kept = P * teacher_per_kept``.
"""

from __future__ import annotations

from typing import Optional


def per_kept(flops_written: float, gate_flops: float, kept: int) -> Optional[float]:
    """What one kept problem cost: everything written and gated, over what survived."""
    return (flops_written + gate_flops) / kept if kept else None


def break_even(fixed: float, synth_per_kept: Optional[float], teacher_per_kept: Optional[float]) -> Optional[float]:
    """The pool size at which the synthesizer's total cost equals the teacher's (None: never, or unknown)."""
    if synth_per_kept is None or teacher_per_kept is None or synth_per_kept >= teacher_per_kept:
        return None
    return fixed / (teacher_per_kept - synth_per_kept)


def dollars(prompt_tokens: int, completion_tokens: int, price: Optional[list]) -> Optional[float]:
    """``price`` = [dollars per prompt token, dollars per completion token] (``assay plan``'s ``prices``)."""
    if not price:
        return None
    return prompt_tokens * float(price[0]) + completion_tokens * float(price[1])


def ledger(teacher: dict, synthesizers: dict[str, dict], fixed: dict[str, dict]) -> dict:
    """``teacher`` and each synthesizer: {flops (written), gate_flops, kept}; ``fixed``: per synthesizer,
    {part: flops} of what it cost before writing its first problem. Per synthesizer: cost per kept
    problem, its fixed cost, and the break-even pool size against the teacher."""
    t = per_kept(teacher["flops"], teacher["gate_flops"], teacher["kept"])
    out = {"teacher": {**teacher, "flops_per_kept": t}}
    for name, s in synthesizers.items():
        f = sum(fixed.get(name, {}).values())
        pk = per_kept(s["flops"], s["gate_flops"], s["kept"])
        out[name] = {**s, "flops_per_kept": pk, "fixed_flops": f, "fixed": dict(fixed.get(name, {})),
                     "break_even_pool": break_even(f, pk, t),
                     "per_kept_vs_teacher": (pk / t) if pk is not None and t else None}
    return out
