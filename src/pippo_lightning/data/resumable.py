"""A train loader that resumes mid-epoch: the data modules' own state, saved by Lightning.

The batches an interrupted run already trained on are skipped on resume, so the same batches
follow as in an uninterrupted run. Sample and view choices are drawn from (seed, epoch, index)
(:mod:`.samplers`), so the position in the epoch is the whole of the data's random state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


# --------------------------------------------------------------------------- data position
class _SkipBatches:
    """A batch sampler whose next epoch starts `skip` batches in (one-shot, for resume)."""

    def __init__(self, batch_sampler: Any, loader: ResumableDataLoader) -> None:
        self.batch_sampler, self.loader = batch_sampler, loader

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        skip = self.loader._take_skip()
        for i, batch in enumerate(self.batch_sampler):
            # the skipped batches' indices are drawn but their samples never loaded
            if i >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning sees as stateful: its state is (epoch, batches handed out).

    Lightning restores it before creating the epoch's iterator, and the iterator then skips the
    batches the interrupted run already trained on — the same batches follow as in an
    uninterrupted run. The skip sits on the (per-rank) batch sampler, so it also holds under
    DDP's sampler wrapping. No `__init__` of its own: Lightning re-creates loaders from
    DataLoader's arguments when it injects a distributed sampler.
    """

    def __iter__(self) -> Any:
        self._handed_out = 0
        iterator = super().__iter__()
        return _Counting(iterator, self)

    @property
    def _index_sampler(self) -> Any:
        base = super()._index_sampler
        return _SkipBatches(base, self) if self._auto_collation else base

    def _take_skip(self) -> int:
        epoch, batches = getattr(self, "_pending", (None, 0))
        self._pending = (None, 0)
        current = getattr(self.sampler, "epoch", epoch)
        # a checkpoint from an epoch's last batch resumes at the next epoch: nothing to skip
        skip = batches if epoch == current and batches < len(self.batch_sampler) else 0
        self._skipped = skip
        self._handed_out = skip
        return skip

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": int(getattr(self.sampler, "epoch", 0)),
            "batches": int(getattr(self, "_handed_out", 0)),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pending = (state["epoch"], state["batches"])
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(state["epoch"])


class _Counting:
    """Wraps a DataLoader iterator and counts the batches it hands out."""

    def __init__(self, iterator: Any, loader: ResumableDataLoader) -> None:
        self.iterator, self.loader = iterator, loader

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader._handed_out = getattr(self.loader, "_handed_out", 0) + 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iterator, name)
