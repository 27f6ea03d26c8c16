"""Tell an epoch-aware dataset which epoch the trainer is in, so each epoch draws a fresh, reproducible sample set."""

from __future__ import annotations

from ignite.engine import Engine, Events

__all__ = ["DatasetEpochSetter"]


class DatasetEpochSetter:
    """Call `dataset.set_epoch(e)` at every EPOCH_STARTED with e = trainer epoch - 1 (0-based).

    ShapeAugmentedDataset derives each sample's randomness from (seed, epoch, index); without this
    every epoch would repeat epoch 0. A resumed run restores `engine.state.epoch` before the first
    EPOCH_STARTED, so it continues with the epoch it would have drawn had it never stopped.
    """

    def __init__(self, dataset):
        if not callable(getattr(dataset, "set_epoch", None)):
            raise TypeError(f"{type(dataset).__name__} has no set_epoch(epoch) method")
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch - 1)
