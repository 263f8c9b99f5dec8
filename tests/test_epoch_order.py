"""engine.EpochOrder, the one data order of every loop: each step's items are a slice of the seeded permutation of
its epoch (seed * 1_000_003 + epoch), whatever step a run starts or resumes at; each epoch is logged once."""

from __future__ import annotations

import math

import torch

from mixtune.train.engine import EpochOrder


class _Log:
    def __init__(self):
        self.rows = []

    def log(self, step, **values):
        self.rows.append((step, values))


def _by_hand(n: int, per_step: int, seed: int, step: int, drop_last: bool) -> tuple[int, list[int]]:
    per_epoch = max(1, n // per_step if drop_last else math.ceil(n / per_step))
    epoch, pos = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return epoch, order[pos * per_step:(pos + 1) * per_step]


def test_every_step_takes_its_epochs_slice_and_a_resumed_order_agrees():
    for n, per_step, drop_last in ((10, 4, False), (10, 4, True), (3, 5, False), (12, 3, True)):
        whole = EpochOrder(n, per_step, seed=7, drop_last=drop_last)
        picks = [whole.pick(step) for step in range(9)]
        assert picks == [_by_hand(n, per_step, 7, step, drop_last) for step in range(9)]
        resumed = EpochOrder(n, per_step, seed=7, drop_last=drop_last)
        assert [resumed.pick(step) for step in range(5, 9)] == picks[5:]  # started mid-epoch: the same items
    assert [len(EpochOrder(10, 4, 0).pick(s)[1]) for s in range(3)] == [4, 4, 2]  # the last slice is shorter
    assert [len(EpochOrder(10, 4, 0, drop_last=True).pick(s)[1]) for s in range(3)] == [4, 4, 4]  # or not taken
    epoch_items = sorted(i for s in range(3) for i in EpochOrder(10, 4, 3).pick(s)[1])
    assert epoch_items == list(range(10))  # every item once per epoch


def test_each_epoch_is_logged_once_with_its_shuffle_seed():
    log = _Log()
    order = EpochOrder(6, 2, seed=1, log=log)
    for step in range(2, 8):  # resumed at step 2: epoch 0 is logged where the run starts
        order.pick(step)
    assert log.rows == [(2, {"epoch": 0, "shuffle_seed": 1_000_003}), (3, {"epoch": 1, "shuffle_seed": 1_000_004}),
                        (6, {"epoch": 2, "shuffle_seed": 1_000_005})]
