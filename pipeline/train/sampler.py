"""Micro-batches for one process: the examples its positions of the global stream name, in order."""

from __future__ import annotations

import torch

from pipeline.train.config import BatchLayout
from pipeline.train.dataset import collate
from pipeline.train.order import ExampleOrder


class MicroBatchSampler(torch.utils.data.Sampler):
    """Dataset indices of each micro-batch process ``rank`` trains on, from ``start_step`` to ``end_step``.

    Yields, for step in [start_step, end_step) and micro in [0, accumulation), the list
    ``[order(p) for p in layout.positions(step, micro, rank)]``: the very examples, in the
    very order, that the loop pairs with its random draws.
    """

    def __init__(self, order: ExampleOrder, layout: BatchLayout, start_step: int, end_step: int, rank: int) -> None:
        self.order, self.layout, self.start, self.end, self.rank = order, layout, start_step, end_step, rank

    def __iter__(self):
        for step in range(self.start, self.end):
            for micro in range(self.layout.accumulation):
                yield [self.order(p) for p in self.layout.positions(step, micro, self.rank)]

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.layout.accumulation


def micro_batch_loader(dataset, sampler: MicroBatchSampler, num_workers: int, collate_fn=collate):
    """A DataLoader of collated micro-batches; ``num_workers`` processes decode and resize images.

    The dataset is deterministic (centre crop), so any number of workers gives the same batches.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers, persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
