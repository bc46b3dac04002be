"""Attention biasing: keep softmax entropy steady when sampling more views than were trained.

With N tokens the entropy of the attention distribution grows like log N; scaling the logits by
log N_infer / log N_train (times gamma) undoes that growth (Pippo paper, Sec. 3.4).
"""

from __future__ import annotations

import math


def attention_softmax_scale(
    gamma: float, num_tokens_infer: int, num_tokens_train: int, head_dim: int
) -> float:
    """Softmax scale lambda = sqrt(gamma * log(N_infer) / log(N_train) / head_dim) for SDPA.

    N counts every token in one sample's sequence (all target views plus the reference);
    gamma in [1.4, 1.6] works in practice, gamma = 1 with N_infer = N_train gives 1/sqrt(d).
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if num_tokens_infer < 2 or num_tokens_train < 2:
        raise ValueError(
            "token counts must be >= 2 (log N must be positive), got "
            f"num_tokens_infer={num_tokens_infer}, num_tokens_train={num_tokens_train}"
        )
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    return math.sqrt(gamma * math.log(num_tokens_infer) / math.log(num_tokens_train) / head_dim)
