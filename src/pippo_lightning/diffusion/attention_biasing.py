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


def original_train_views(tokens_per_view: int) -> tuple[int, str]:
    """(N_train in views, the rule that gave it) as the original release fixes it for attention
    biasing: from the tokens per view alone, whatever its config's num_views says.

    facebookresearch/pippo (6f80b22) latent_diffusion/models/dit.py, lines 171-185
    ("hardcoded number of training views (depending on resolution)"): exactly 1024 tokens per
    view (512 px) -> 12 views, more (1024 px) -> 2, fewer (e.g. 128 px, 64 tokens) -> 24. Its
    views there count the reference(s) too: they join the sequence before the blocks
    (`NV = NV + NVR`, line 624), so N_train = views x tokens_per_view is the whole sequence.
    """
    if tokens_per_view < 1:
        raise ValueError(f"tokens_per_view must be >= 1, got {tokens_per_view}")
    if tokens_per_view == 1024:
        return 12, "exactly 1024 tokens per view (512 px) -> 12 views"
    if tokens_per_view > 1024:
        return 2, "more than 1024 tokens per view (1024 px) -> 2 views"
    return 24, "fewer than 1024 tokens per view (e.g. 128 px) -> 24 views"
