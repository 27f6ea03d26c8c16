"""TensorBoard images of validation patches with the true (green) and predicted (red) contours drawn on them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["TensorBoardContourImages", "contour_panels"]

TRUTH_COLOR = (0.0, 1.0, 0.0)
PRED_COLOR = (1.0, 0.0, 0.0)


def contour_panels(images: torch.Tensor, truth: torch.Tensor | None, pred: torch.Tensor | None) -> np.ndarray:
    """Draw contours on patches: images (K, 1, H, W) in [0, 1], points (K, N, 2) (x, y) px -> (K, 3, H, W) float.

    Truth is drawn first so the prediction stays visible where the two overlap.
    """
    from diskrobust.visualize import draw_contours

    panels = []
    for i in range(images.shape[0]):
        contours, colors = [], []
        if truth is not None:
            contours.append(truth[i].detach().cpu().numpy())
            colors.append(TRUTH_COLOR)
        if pred is not None:
            contours.append(pred[i].detach().cpu().numpy())
            colors.append(PRED_COLOR)
        image = images[i].detach().cpu().float().numpy()[0]
        panels.append(np.asarray(draw_contours(image, contours, colors), dtype=np.float32))
    return np.stack(panels) if panels else np.zeros((0, 3) + tuple(images.shape[-2:]), np.float32)


def _default_summary(output) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """MONAI engine output (decollate=False) -> (images (B, 1, H, W), truth (B, N, 2) | None, pred (B, N, 2) | None)."""
    label = output.get("label") or {}
    pred = output.get("pred") or {}
    truth_points = label.get("points") if isinstance(label, dict) else None
    pred_points = pred.get("pred") if isinstance(pred, dict) else None
    return output["image"], truth_points, pred_points


class TensorBoardContourImages:
    """Log the first `num_images` samples of an evaluation run as images with contours, every `interval` epochs.

    Attach to the validation evaluator (decollate=False). The step and the interval use the evaluator's
    `state.epoch`, which MONAI's ValidationHandler sets to the trainer's epoch. Images are tagged
    `{tag}/{i}` (i = sample index in the validation order), each (3, H, W): truth green, prediction red.

    Args:
        summary_writer: a SummaryWriter to share with other handlers, or None to create one in `log_dir`.
        log_dir: where to create the writer when `summary_writer` is None.
        num_images: samples logged per epoch (the first ones the evaluator sees, so the same patches every time).
        interval: log every `interval` epochs.
        tag: TensorBoard tag prefix.
        output_transform: engine.state.output -> (images, truth points or None, pred points or None).
    """

    def __init__(
        self,
        summary_writer=None,
        log_dir: str | None = None,
        num_images: int = 4,
        interval: int = 1,
        tag: str = "val/contours",
        output_transform: Callable = _default_summary,
    ):
        if num_images < 1 or interval < 1:
            raise ValueError(f"num_images and interval must be >= 1, got {num_images}, {interval}")
        if summary_writer is None:
            if log_dir is None:
                raise ValueError("TensorBoardContourImages needs a summary_writer or a log_dir")
            from torch.utils.tensorboard import SummaryWriter

            summary_writer = SummaryWriter(log_dir=log_dir)
        self.writer = summary_writer
        self.num_images = int(num_images)
        self.interval = int(interval)
        self.tag = tag
        self.output_transform = output_transform
        self._images: list[torch.Tensor] = []
        self._truth: list[torch.Tensor] = []
        self._pred: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _active(self, engine: Engine) -> bool:
        return engine.state.epoch % self.interval == 0

    def _reset(self, engine: Engine) -> None:
        self._images, self._truth, self._pred = [], [], []

    def _collected(self) -> int:
        return sum(int(x.shape[0]) for x in self._images)

    def _collect(self, engine: Engine) -> None:
        if not self._active(engine) or self._collected() >= self.num_images:
            return
        images, truth, pred = self.output_transform(engine.state.output)
        take = self.num_images - self._collected()
        self._images.append(images[:take].detach().cpu())
        if truth is not None:
            self._truth.append(truth[:take].detach().cpu())
        if pred is not None:
            self._pred.append(pred[:take].detach().cpu())

    def _write(self, engine: Engine) -> None:
        if not self._active(engine) or not self._images:
            return
        images = torch.cat(self._images)
        truth = torch.cat(self._truth) if self._truth else None
        pred = torch.cat(self._pred) if self._pred else None
        panels = contour_panels(images, truth, pred)
        for i, panel in enumerate(panels):
            self.writer.add_image(f"{self.tag}/{i}", panel, global_step=engine.state.epoch, dataformats="CHW")
        self.writer.flush()
        self._reset(engine)
