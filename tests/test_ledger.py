"""The synthetic-data cost ledger, hand-computed."""

from assay.synth.ledger import break_even, dollars, ledger, per_kept


def test_per_kept_counts_rejected_outputs_and_the_gates():
    assert per_kept(100.0, 20.0, 4) == 30.0 and per_kept(1.0, 0.0, 0) is None


def test_break_even_pool_hand_computed():
    # fixed 1000, synthesizer 10 per kept, teacher 60: 1000 + 10 P = 60 P at P = 20.
    assert break_even(1000.0, 10.0, 60.0) == 20.0
    assert break_even(1000.0, 60.0, 10.0) is None and break_even(1.0, None, 2.0) is None
    led = ledger({"flops": 600.0, "gate_flops": 0.0, "kept": 10},
                 {"synth": {"flops": 80.0, "gate_flops": 20.0, "kept": 10}},
                 {"synth": {"distill_calls": 600.0, "distill_training": 400.0}})
    assert led["teacher"]["flops_per_kept"] == 60.0
    assert led["synth"]["flops_per_kept"] == 10.0 and led["synth"]["fixed_flops"] == 1000.0
    assert led["synth"]["break_even_pool"] == 20.0 and led["synth"]["per_kept_vs_teacher"] == 10.0 / 60.0


def test_dollars_from_token_prices():
    assert dollars(1000, 500, [1e-6, 4e-6]) == 1000 * 1e-6 + 500 * 4e-6 and dollars(1, 1, None) is None
