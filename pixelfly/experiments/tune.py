"""The learning-rate rule of every table: each method gets the same small sweep, scored on
a validation split carved out of the training data (never the test/held-out split), and
is then reported at its best rate."""
from __future__ import annotations

import math

__all__ = ["LEARNING_RATES", "choose_lr"]

#: the sweep every method gets (AdamW, warmup + cosine)
LEARNING_RATES = (3e-4, 1e-3, 3e-3)


def choose_lr(train_and_score, lrs=LEARNING_RATES):
    """``train_and_score(lr) -> validation loss`` (lower is better; a fresh model each
    call). Returns ``(best_lr, {lr: loss})``; a diverged run (NaN/inf) never wins."""
    if not lrs:
        raise ValueError("lrs must not be empty")
    scores = {float(lr): float(train_and_score(float(lr))) for lr in lrs}
    finite = {lr: s for lr, s in scores.items() if math.isfinite(s)}
    if not finite:
        raise RuntimeError(f"every learning rate diverged: {scores}")
    return min(finite, key=finite.get), scores
