"""Keep the newest few full training checkpoints on disk, across resumed runs."""

from __future__ import annotations

from ignite.engine import Engine, Events

__all__ = ["PruneCheckpoints"]


class PruneCheckpoints:
    """After each epoch, delete all but the `keep` newest complete `{prefix}_epoch=N.pt` files in `ckpt_dir`.

    Ignite's Checkpoint only prunes files it wrote itself, so a resumed run would leave the previous
    run's checkpoints behind; this looks at the folder instead. Attach it after the CheckpointSaver so
    the newest checkpoint exists before older ones go (there is always one to resume from).
    Only checkpoints up to the engine's current epoch are candidates: a file from a later epoch is not
    this run's (another run's, left in the folder), and the run's own newest one is never deleted.
    """

    def __init__(self, ckpt_dir: str, keep: int = 2, prefix: str = "checkpoint"):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.ckpt_dir = ckpt_dir
        self.keep = int(keep)
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> list[str]:
        from diskrobust.checkpoints import list_checkpoints

        removed = []
        current = engine.state.epoch if engine is not None else None
        mine = [(e, p) for e, p in list_checkpoints(self.ckpt_dir, self.prefix) if current is None or e <= current]
        for _, path in mine[self.keep:]:
            path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed
