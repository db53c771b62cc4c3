"""A training loader that a killed run resumes where it stopped, in the same sample order.

``ResumableLoader`` shuffles each epoch with a permutation fixed by ``(seed, epoch)`` and counts the
batches it has handed out; Lightning saves that state in every checkpoint (the loader is
``_Stateful``: it has ``state_dict``/``load_state_dict``) and restores it on ``--ckpt_path``, so the
resumed run sees exactly the batches the uninterrupted run would have seen. Under several
processes (DDP) Lightning swaps in its distributed sampler and the order is its own.

A dataset that caches its samples in memory (``EllipsesDataset(cache=True)``) and is loaded by
worker processes keeps, in the training process, every sample the workers send
(``dataset.adopt_batch(batch)``); once it holds them all (``dataset.holds_every_sample()``) the
loader serves the next epochs from that memory in the training process, without the workers: a
worker handing out cached samples costs the training process ≈ 3.5–6 ms per batch of 8 (unpickling and
file-descriptor passing of every tensor) and the worker a share of a core (docs/benchmarks.md). The
order and the resumed position are unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochPermutation", "ResumableLoader"]


class EpochPermutation(Sampler[int]):
    """Indices ``0 … length − 1`` in the order ``randperm(length)`` seeded by ``seed + epoch``,
    starting at position ``start`` (set by the loader when it resumes mid-epoch)."""

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed = int(length), int(seed)
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return self.length


class ResumableLoader(DataLoader):
    """A shuffling ``DataLoader`` whose position (epoch, batches handed out) is checkpointed."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, sampler: Optional[Sampler] = None,
                 **kwargs: Any):
        self.seed = int(seed)
        self.permutation = EpochPermutation(len(dataset), self.seed)
        kwargs.pop("shuffle", None)
        # Lightning re-creates the loader with its DistributedSampler under DDP: that order is used then
        super().__init__(dataset, batch_size=batch_size, sampler=sampler if sampler is not None else self.permutation,
                         **kwargs)
        self._epoch, self._served, self._resume = -1, 0, False

    def __iter__(self):
        if not self._resume:
            self._epoch, self._served = self._epoch + 1, 0
        self._resume = False
        self.permutation.epoch, self.permutation.start = self._epoch, self._served * self.batch_size
        from_memory = self.serves_from_memory  # decided once per epoch
        adopt = getattr(self.dataset, "adopt_batch", None) if self.num_workers > 0 and not from_memory else None
        for batch in (self._in_process() if from_memory else super().__iter__()):
            self._served += 1
            if adopt is not None:
                adopt(batch)
            yield batch

    @property
    def serves_from_memory(self) -> bool:
        """Whether this epoch is served in the training process from the dataset's memory (every
        sample received from the workers, the loader's own order; not under DDP's sampler)."""
        holds = getattr(self.dataset, "holds_every_sample", None)
        return self.num_workers > 0 and self.sampler is self.permutation and holds is not None and holds()

    def _in_process(self) -> Iterator[Any]:
        """This epoch's batches, loaded in this process (the same sampler, batch size and collation)."""
        return iter(DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.permutation,
                               collate_fn=self.collate_fn, drop_last=self.drop_last, num_workers=0))

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self._epoch, "batches": self._served, "seed": self.permutation.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if state.get("seed", self.permutation.seed) != self.permutation.seed:
            raise ValueError(f"the checkpoint's loader seed {state['seed']} differs from {self.permutation.seed}")
        self._epoch, self._served = int(state["epoch"]), int(state["batches"])
        finished = self._served * self.batch_size >= len(self.permutation)
        self._resume = not finished and self._epoch >= 0  # a finished epoch: the next iteration starts the next one
