"""Best-method selection: does the challenger beat the champion, significantly, on the same test split?

McNemar's test on paired predictions: only the discordant pairs matter — b (challenger right,
champion wrong) and c (the reverse). Exact two-sided binomial test when b + c < 25, otherwise the
chi-square statistic with continuity correction (1 degree of freedom).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def mcnemar(challenger_correct: Sequence[bool], champion_correct: Sequence[bool]) -> tuple[int, int, float]:
    """Returns (b, c, two-sided p-value)."""
    if len(challenger_correct) != len(champion_correct):
        raise ValueError("McNemar needs paired predictions on the same test images")
    b = sum(1 for a, k in zip(challenger_correct, champion_correct) if a and not k)
    c = sum(1 for a, k in zip(challenger_correct, champion_correct) if k and not a)
    n = b + c
    if n == 0:
        return b, c, 1.0
    if n < 25:
        tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2**n
        return b, c, min(1.0, 2 * tail)
    stat = (abs(b - c) - 1) ** 2 / n
    return b, c, math.erfc(math.sqrt(stat / 2))  # survival function of chi-square(1)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None
    p_value: float | None
    b: int | None = None
    c: int | None = None


def gate(challenger_correct: Sequence[bool], champion_correct: Sequence[bool] | None, *, margin: float, alpha: float) -> Decision:
    """Promote only if the challenger beats the champion by >= margin AND McNemar's p < alpha."""
    acc = sum(challenger_correct) / max(len(challenger_correct), 1)
    if champion_correct is None:
        return Decision(True, "no current champion", acc, None, None)
    champ = sum(champion_correct) / max(len(champion_correct), 1)
    b, c, p = mcnemar(challenger_correct, champion_correct)
    if acc - champ < margin:
        why = f"challenger {acc:.4f} does not beat champion {champ:.4f} by the margin {margin:g} (McNemar p={p:.3g})"
        return Decision(False, why, acc, champ, p, b, c)
    if p >= alpha:
        why = f"challenger {acc:.4f} vs champion {champ:.4f}: not significant (McNemar p={p:.3g} >= {alpha:g}; b={b}, c={c})"
        return Decision(False, why, acc, champ, p, b, c)
    return Decision(True, f"challenger {acc:.4f} beats champion {champ:.4f} (McNemar p={p:.3g} < {alpha:g}; b={b}, c={c})", acc, champ, p, b, c)
