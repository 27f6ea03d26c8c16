"""TensorBoard steps that continue another run's: fine-tuning is logged after the model it starts from."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

__all__ = ["StepOffsetWriter"]


class StepOffsetWriter(SummaryWriter):
    """A SummaryWriter that adds `step_offset` to every `global_step` it is given.

    MONAI's and the project's handlers log at the engine's own counters (iteration or epoch), which
    start at 0 in a fine-tuning run; with the offset of the model it starts from
    (`diskrobust.checkpoints.continued_steps`) its curves continue after that model's last step instead
    of being drawn over its first epochs. One writer per counter: iterations and epochs need different
    offsets (the bundle's `tb_writer` and `tb_epoch_writer`).
    """

    def __init__(self, log_dir: str | None = None, step_offset: int = 0, **kwargs):
        super().__init__(log_dir=log_dir, **kwargs)
        self.step_offset = int(step_offset)

    def _step(self, step):
        return step if step is None else int(step) + self.step_offset

    def add_scalar(self, tag, scalar_value, global_step=None, *args, **kwargs):
        return super().add_scalar(tag, scalar_value, self._step(global_step), *args, **kwargs)

    def add_scalars(self, main_tag, tag_scalar_dict, global_step=None, *args, **kwargs):
        return super().add_scalars(main_tag, tag_scalar_dict, self._step(global_step), *args, **kwargs)

    def add_image(self, tag, img_tensor, global_step=None, *args, **kwargs):
        return super().add_image(tag, img_tensor, self._step(global_step), *args, **kwargs)

    def add_images(self, tag, img_tensor, global_step=None, *args, **kwargs):
        return super().add_images(tag, img_tensor, self._step(global_step), *args, **kwargs)

    def add_text(self, tag, text_string, global_step=None, *args, **kwargs):
        return super().add_text(tag, text_string, self._step(global_step), *args, **kwargs)

    def add_histogram(self, tag, values, global_step=None, *args, **kwargs):
        return super().add_histogram(tag, values, self._step(global_step), *args, **kwargs)
    # add_figure goes through add_image(s): not overridden, or the offset would be added twice
