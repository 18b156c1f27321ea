"""The data order: each epoch's batches drawn from ``(seed, epoch)``, so a resumed run sees the same
batches; moving a batch to the training device."""
from __future__ import annotations

from functools import partial

import torch
from torch.utils.data import (
    BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler,
)

from .rng import _init_worker


def epoch_batches(loader: DataLoader, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The index batches of one epoch: a function of ``(seed, epoch)`` only; this rank's shard under DDP."""
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        raise TypeError("fit needs a map-style dataset and a DataLoader with batch_size set")
    batch_sampler = loader.batch_sampler
    if world > 1:
        sampler = loader.sampler
        if not isinstance(sampler, DistributedSampler):
            sampler = DistributedSampler(loader.dataset, world, rank, shuffle=isinstance(sampler, RandomSampler),
                                         seed=seed)
        batch_sampler = BatchSampler(sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    if hasattr(getattr(batch_sampler, "sampler", None), "set_epoch"):
        batch_sampler.sampler.set_epoch(epoch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_epoch_seed(seed, epoch))
        if loader.generator is not None:
            loader.generator.manual_seed(_epoch_seed(seed, epoch))
        return [list(b) for b in batch_sampler]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


def _epoch_loader(loader: DataLoader, batches: list[list[int]], seed: int, epoch: int) -> DataLoader:
    """A DataLoader over ``batches`` with ``loader``'s settings and a per-epoch worker seed."""
    return DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=partial(_init_worker, loader.worker_init_fn),
                      multiprocessing_context=loader.multiprocessing_context,
                      generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch) + 1),
                      prefetch_factor=loader.prefetch_factor)


def _to_device(x, device: torch.device):
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x
