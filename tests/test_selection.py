import math

import pytest

from components.tracking.selection import gate, mcnemar


def test_mcnemar_exact_binomial_small_counts():
    a = [True] * 10 + [False] * 2 + [True] * 50
    k = [False] * 10 + [True] * 2 + [True] * 50
    b, c, p = mcnemar(a, k)
    assert (b, c) == (10, 2)
    assert p == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)


def test_mcnemar_chi_square_with_continuity_correction():
    a = [True] * 30 + [False] * 10
    k = [False] * 30 + [True] * 10
    b, c, p = mcnemar(a, k)
    assert (b, c) == (30, 10)
    assert p == pytest.approx(math.erfc(math.sqrt(((20 - 1) ** 2 / 40) / 2)))
    assert p == pytest.approx(0.002663, abs=1e-5)


def test_mcnemar_no_discordant_pairs_and_unpaired():
    assert mcnemar([True, False], [True, False]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="paired"):
        mcnemar([True], [True, False])


def test_gate_keeps_champion_unless_significantly_better():
    champion = [True] * 90 + [False] * 10
    slightly = [True] * 92 + [False] * 8  # +2 pp, b=2, c=0: p = 0.5
    d = gate(slightly, champion, margin=0.0, alpha=0.05)
    assert not d.promote and "not significant" in d.reason and d.p_value == pytest.approx(0.5)
    much = [True] * 100
    d = gate(much, champion, margin=0.0, alpha=0.05)
    assert d.promote and d.p_value < 0.05 and d.champion_accuracy == 0.9
    d = gate(much, champion, margin=0.2, alpha=0.05)
    assert not d.promote and "margin" in d.reason
    worse = [True] * 80 + [False] * 20
    assert not gate(worse, champion, margin=0.0, alpha=0.05).promote
    assert gate(worse, None, margin=0.0, alpha=0.05).promote


def test_the_selection_can_weigh_robustness_on_validation():
    from components.tracking.promotion import Candidate, best_candidate

    sharp = Candidate("cnn", "cnn", "r1", "m1", val_acc=0.995, test_acc=0.99, correct_path="", val_robust=0.60)
    sturdy = Candidate("rnn", "rnn", "r2", "m2", val_acc=0.985, test_acc=0.98, correct_path="", val_robust=0.95)
    assert best_candidate([sharp, sturdy]).key == "cnn"  # default: validation accuracy alone
    assert best_candidate([sharp, sturdy], robustness_weight=0.5).key == "rnn"
    assert best_candidate([sharp, sturdy], robustness_weight=0.01).key == "cnn"
