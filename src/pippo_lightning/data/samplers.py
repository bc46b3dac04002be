"""Samplers that carry the epoch to the dataset, so per-sample randomness is reproducible."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative ints (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` pairs, shuffled per epoch from ``seed`` when ``shuffle``.

    Sending the epoch with each index lets a dataset draw its per-sample randomness from
    (seed, epoch, index) inside worker processes, which never see ``set_epoch`` calls made on the
    main process. Lightning calls :meth:`set_epoch` at the start of every training epoch (also
    through its distributed sampler wrapper).
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        return iter([(index, self.epoch) for index in order])
