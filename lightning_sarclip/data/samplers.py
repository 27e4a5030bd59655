"""Training order, per-sample randomness and mid-epoch resume: what makes a restarted run repeat itself exactly.

A run killed in the middle of an epoch and resumed from its last checkpoint must see the rest of that epoch as the
uninterrupted run would have: the same samples, in the same order, with the same captions and the same
augmentation, whatever the number of dataloader workers. Three pieces do that:

* :class:`SeededEpochSampler` wraps an epoch-seeded order (:class:`WeightedEpochSampler` by default) and pairs
  every drawn index with a *sample seed*, a pure function of (seed, epoch, position in the epoch). Because the
  seed travels with the index, it survives Lightning's ``DistributedSamplerWrapper`` (which shards the materialised
  list across ranks) and the hand-off to worker processes.
* :class:`SeededDataset` turns ``(index, seed)`` into the wrapped dataset's item. A dataset with a
  ``seeded_item(index, seed)`` method draws its training-time random choices from that seed; any other map-style
  dataset (plain ``int`` ``__getitem__``) is called with the ``random``, NumPy and torch CPU generators seeded from
  it, and restored afterwards. The seed is attached to the item (``"seed"``) so that the collate function can
  draw the training caption from it too.
* :class:`ResumableDataLoader` is a ``DataLoader`` with Lightning's stateful-loader protocol (``state_dict`` /
  ``load_state_dict``): it counts the batches it has handed out in the current epoch, and after a restart skips
  that many batches of the resumed epoch. Skipping happens on the batch-index level, after Lightning's rank
  sharding, so no skipped image is loaded and every rank skips its own share.

Why the loader counts batches itself: Lightning fetches batches of a sized loader one at a time (its prefetching
is only for loaders without a length), so a batch handed out is a batch the loop consumed. Why the skip is decided
at the first ``next()`` and not at ``iter()``: on restart Lightning builds the iterator *before* it sets the
epoch of the sampler, and a checkpoint written at the end of an epoch is resumed at the start of the next one;
the epoch the sampler reports when the first batch is requested says which case this is (the saved position
applies only to the epoch it was recorded in).

Exact resume needs the same dataset, batch size and number of ranks as the interrupted run (a loader whose length
differs from the saved one logs a warning).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger("lightning_sarclip")

_MASK64 = (1 << 64) - 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 finaliser): equal inputs, equal seed, in any process."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def sample_rng(seed: int, purpose: str) -> random.Random:
    """An independent ``random.Random`` per (sample seed, purpose), e.g. ``"caption"`` vs. the dataset's draws."""
    return random.Random(f"{purpose}:{int(seed)}")  # str seeds hash with SHA-512: stable across processes


class WeightedEpochSampler(Sampler[int]):
    """Per epoch, exactly ``len(self)`` indices, seeded by (``seed``, epoch).

    * With ``weights``: ``num_samples`` draws with replacement by per-item weight.
    * Without: seeded permutations of all items, concatenated and cut at ``num_samples`` (each item once per
      permutation, so an epoch shorter than the data is a random subset without repeats and a longer one sees every
      item before any repeats). With ``num_samples`` left out that is one permutation.

    The length must be what the iterator yields: Lightning sizes the LR schedule (``estimated_stepping_batches``)
    from it. Has ``set_epoch``, which Lightning calls every epoch (also through its distributed wrapper).
    """

    def __init__(self, weights: Sequence[float] | np.ndarray | None, num_items: int, num_samples: int | None = None,
                 seed: int = 0):
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise ValueError(f"WeightedEpochSampler: num_samples (samples_per_epoch) must be an integer >= 1 or None, "
                             f"got {num_samples!r}")
        if num_items < 1:
            raise ValueError(f"WeightedEpochSampler: num_items must be >= 1 (an empty training split?), got {num_items}")
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.num_items = num_items
        self.num_samples = num_samples or num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            # one generator for every permutation of the epoch: the first one is what a plain shuffle gives
            rounds = -(-self.num_samples // self.num_items)
            order = [i for _ in range(rounds) for i in torch.randperm(self.num_items, generator=generator).tolist()]
            return iter(order[: self.num_samples])
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist())


class SeededEpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)``: indices from ``order``, seeds from (``seed``, epoch, position).

    Args:
        order: a sampler of dataset indices; its ``set_epoch`` (if any) is called with this sampler's.
        seed: base seed of the sample seeds (the datamodule passes the run's seed).
    """

    def __init__(self, order: Sampler[int], seed: int = 0) -> None:
        if not isinstance(order, Sized):
            raise TypeError(f"SeededEpochSampler needs a sampler with a length, got {type(order).__name__}")
        self.order = order
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_epoch = getattr(self.order, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.order)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        seeds = torch.randint(0, 2**62, (len(indices),), generator=generator).tolist()
        return iter(list(zip(indices, seeds, strict=True)))


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed ``random``, NumPy's global generator and torch's CPU generator; restore all three afterwards.

    Only the CPU generator is touched (``torch.manual_seed`` would also reseed the CUDA generators the model may be
    drawing dropout masks from when data is loaded in the main process).
    """
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededDataset(Dataset):
    """Training view of a map-style dataset whose keys are ``(index, sample_seed)`` pairs.

    ``dataset.seeded_item(index, seed)`` is used when the dataset has it; otherwise ``dataset[index]`` runs with the
    global generators seeded from ``seed``. The item is returned as a new dict with ``"seed"`` added. A plain ``int``
    key reads ``dataset[index]`` unchanged.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        return {**seeded_item(self.dataset, index, seed), "seed": seed}


def seeded_item(dataset: Dataset, index: int, seed: int) -> dict[str, Any]:
    """``dataset``'s item ``index`` with every random draw taken from ``seed``: its ``seeded_item(index, seed)``
    when it has one, else ``dataset[index]`` under :func:`seeded_global_rngs`."""
    own = getattr(dataset, "seeded_item", None)
    if callable(own):
        item = own(index, seed)
    else:
        with seeded_global_rngs(seed):
            item = dataset[index]
    if not isinstance(item, dict):
        raise TypeError(f"{type(dataset).__name__}[{index}] returned {type(item).__name__}; expected a dict")
    return item


class _LoaderPosition:
    """Mutable position of a :class:`ResumableDataLoader` (one object, so Lightning's re-instantiation of the
    loader never replays attribute writes made while iterating)."""

    __slots__ = ("epoch", "batches", "pending", "skip")

    def __init__(self) -> None:
        self.epoch: int | None = None  # sampler epoch of the iteration in progress
        self.batches = 0  # batches of that epoch handed out (including skipped ones)
        self.pending: dict[str, Any] | None = None  # loaded state, applied when the next epoch starts
        self.skip = 0  # batches the next batch-index iteration drops


class _SkipFirstBatches:
    """The loader's batch-index sampler, minus the first ``position.skip`` batches.

    ``__iter__`` is a plain function (not a generator), so the skip is read while the DataLoader iterator is being
    built (which may call it more than once); the loader clears it once the iterator exists.
    """

    def __init__(self, index_sampler: Any, position: _LoaderPosition) -> None:
        self.index_sampler = index_sampler
        self.position = position

    def __len__(self) -> int:
        return len(self.index_sampler)

    def __iter__(self) -> Iterator[Any]:
        skip = self.position.skip
        iterator = iter(self.index_sampler)
        return islice(iterator, skip, None) if skip else iterator


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position inside an epoch survives a restart (see the module docstring).

    Takes exactly ``DataLoader``'s arguments, so Lightning can rebuild it with a distributed sampler.
    ``state_dict()`` is ``{"epoch", "batches", "num_batches"}``; ``load_state_dict()`` makes the next epoch skip
    ``batches`` batches if it is the same ``epoch``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = _LoaderPosition()

    @property
    def _index_sampler(self) -> Any:  # the one hook into DataLoader internals: where iterators take indices from
        return _SkipFirstBatches(super()._index_sampler, self._position)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _ResumingIterator(self)

    def _sampler_epoch(self) -> int | None:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        return getattr(sampler, "epoch", None)

    def _start_epoch(self) -> Iterator[Any]:
        position = self._position
        epoch = self._sampler_epoch()
        pending, position.pending = position.pending, None
        skip = 0
        if pending is not None and pending.get("epoch") == epoch:
            skip = int(pending.get("batches", 0))
            saved_length = pending.get("num_batches")
            if saved_length is not None and saved_length != len(self):
                log.warning(
                    "resuming epoch %s at batch %d of %d, but the training loader now has %d batches (different "
                    "data, batch size or number of processes?): the rest of the epoch will not match the "
                    "interrupted run", epoch, skip, saved_length, len(self),
                )
            if skip >= len(self):
                skip = 0  # the saved epoch was complete; this is a new pass over it
        position.epoch, position.batches, position.skip = epoch, skip, skip
        try:
            return super().__iter__()
        finally:
            position.skip = 0

    def state_dict(self) -> dict[str, Any]:
        position = self._position
        if position.pending is not None:  # restored but not started yet: the restored position still holds
            return dict(position.pending)
        return {"epoch": position.epoch, "batches": position.batches, "num_batches": len(self)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        batches = state_dict.get("batches")
        if not isinstance(batches, int) or batches < 0:
            raise ValueError(f"training loader state: 'batches' must be an int >= 0, got {batches!r} in {state_dict}")
        self._position.pending = dict(state_dict)


class _ResumingIterator:
    """Starts the real DataLoader iterator at the first ``next()`` and counts the batches handed out."""

    def __init__(self, loader: ResumableDataLoader) -> None:
        self._loader = loader
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> _ResumingIterator:
        return self

    def __len__(self) -> int:
        return len(self._loader)

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._loader._start_epoch()
        batch = next(self._iterator)
        self._loader._position.batches += 1
        return batch
