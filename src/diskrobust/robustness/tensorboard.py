"""TensorBoard views of a robustness sweep: curves over epsilon and images of the attacks.

Tags (prefix = "<sweep>/<attack>/<head>", e.g. "ind/linf/points" or "ood/uniform_noise/l2"):

    scalars  <prefix>/<metric>                          metric in point_error_px_mean, point_error_px_median,
                                                        point_error_px_p95, point_error_mm_mean,
                                                        polygon_dice_mean, seg_dice_mean, within_tolerance
             step = round(eps * 1000) ("milli-epsilon"): eps 0.07 -> 70, an L2 budget of 40 -> 40000;
             the clean model (eps 0) is step 0 of every IND curve.
    images   <prefix>/eps<eps>/s<sample id>/<view>      IND views: clean, attacked, perturbation_x<scale>,
                                                        contours (on the attacked image: truth green, clean
                                                        prediction blue, attacked prediction orange; colours
                                                        from diskrobust.visualize.COLORS)
                                                        OOD views: start, attacked, target_image (the test patch
                                                        with the target contour), contours (on the attacked
                                                        image: target blue, prediction orange)
             The perturbation is shown with a diverging colour map (red +, blue -, white 0) after multiplying
             by <scale> = 1 / max|delta| (`diskrobust.visualize.amplify_perturbation`): full red is a change of
             +1/scale, e.g. perturbation_x14.3 -> +0.070.

All images are (3, H, W) RGB in [0, 1]; the step is the same milli-epsilon as the scalars.

    text     legend/ind, legend/ood          what each colour and view of the image panels means
             summary/report                  the whole report.md (tables over the budgets, column notes)
             summary/how_to_read             why the curves are images and tables: TensorBoard's default
                                             smoothing (0.6) bends a 2-point eps curve into a wrong line
    images   summary/plots/<name>            the report's matplotlib curves (error, Dice, fraction within
                                             tolerance vs eps), step 0: undistorted by smoothing
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["AttackTensorBoardLogger", "eps_step", "eps_tag", "LEGENDS", "HOW_TO_READ"]

LEGENDS = {
    "ind": ("IND panels under `<attack>/<head>/eps<eps>/s<sample>/`: **clean** the test patch; **attacked** the "
            "patch after the attack; **perturbation_x<scale>** attacked minus clean, red = brighter, blue = darker, "
            "white = unchanged, multiplied by <scale> = 1 / max|change| so full red is a change of +1/scale "
            "(perturbation_x14.3: full red = +0.070); **contours** on the attacked patch: green = true contour, "
            "blue = prediction on the clean patch, orange = prediction on the attacked patch."),
    "ood": ("OOD panels under `<start kind>/<head>/eps<eps>/s<sample>/`: **start** the start image (noise, box noise "
            "or a photograph); **attacked** the start image after the attack; **target_image** the test patch whose "
            "prediction (blue) is the target; **contours** on the attacked image: blue = target, orange = the "
            "network's prediction on the attacked image (close to blue = fooled)."),
}
HOW_TO_READ = ("The curves over the budget are in `summary/plots` (images) and `summary/report` (the tables): "
               "they show the measured values. The scalars `<sweep>/<attack>/<head>/<metric>` use step = round(eps x "
               "1000); TensorBoard's default smoothing (0.6) draws a curve of 2-7 points as a different line, so set "
               "the smoothing slider to 0 before reading them.")


def eps_step(eps: float) -> int:
    """TensorBoard step of an epsilon: milli-epsilon, rounded (0.07 -> 70, 40.0 -> 40000)."""
    return int(round(float(eps) * 1000))


def eps_tag(eps: float) -> str:
    """Epsilon as it appears in tags and file names: 'eps0.070' (3 decimals, more if needed)."""
    text = f"{float(eps):.3f}"
    if float(text) != float(eps):
        text = f"{float(eps):.6g}"
    return f"eps{text}"


def _gray_rgb(image: torch.Tensor) -> torch.Tensor:
    """(1, H, W) or (H, W) in [0, 1] -> (3, H, W)."""
    image = image.detach().float().cpu()
    if image.ndim == 2:
        image = image[None]
    return image.clamp(0, 1).expand(3, -1, -1).contiguous()


class AttackTensorBoardLogger:
    """Writes a sweep's scalars and example images to a SummaryWriter (or a log dir it opens).

    Args:
        writer: a `torch.utils.tensorboard.SummaryWriter`, or a folder to open one in.
        num_images: how many samples (the first ones of each batch given) get images per epsilon.
    """

    def __init__(self, writer, num_images: int = 4):
        if isinstance(writer, (str, Path)):
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(writer))
            self._owns_writer = True
        else:
            self._owns_writer = False
        if int(num_images) != num_images or num_images < 0:
            raise ValueError(f"num_images must be an integer >= 0, got {num_images}")
        self.writer = writer
        self.num_images = int(num_images)

    def log_scalars(self, prefix: str, eps: float, summary: Mapping[str, float]) -> None:
        """One value per metric at step `eps_step(eps)`; non-finite values are skipped."""
        step = eps_step(eps)
        for name, value in summary.items():
            value = float(value)
            if value == value and abs(value) != float("inf"):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def log_ind_examples(self, prefix: str, eps: float, sample_ids: Sequence[int], clean: torch.Tensor,
                         attacked: torch.Tensor, true_points: torch.Tensor, clean_points: torch.Tensor | None,
                         attacked_points: torch.Tensor | None) -> list[str]:
        """IND images for the first `num_images` samples.

        clean, attacked: (B, 1, H, W); true_points, clean_points, attacked_points: (B, N, 2) patch px
        (a prediction is None when the network has no point head). Returns the tags written.
        """
        from diskrobust.visualize import COLORS, amplify_perturbation, draw_contours

        self.log_legend("ind")
        step = eps_step(eps)
        tags = []
        for i in range(min(self.num_images, clean.shape[0])):
            base = f"{prefix}/{eps_tag(eps)}/s{int(sample_ids[i]):03d}"
            delta_img, scale = amplify_perturbation((attacked[i] - clean[i]).detach().cpu())
            contours, colors = [true_points[i]], [COLORS["truth"]]
            if clean_points is not None:
                contours.append(clean_points[i])
                colors.append(COLORS["clean"])
            if attacked_points is not None:
                contours.append(attacked_points[i])
                colors.append(COLORS["attacked"])
            views = {
                "clean": _gray_rgb(clean[i]),
                "attacked": _gray_rgb(attacked[i]),
                f"perturbation_x{float(scale):.1f}": torch.as_tensor(delta_img),
                "contours": draw_contours(attacked[i].detach().cpu(), [c.detach().cpu() for c in contours], colors),
            }
            for view, img in views.items():
                tag = f"{base}/{view}"
                self.writer.add_image(tag, img, step, dataformats="CHW")
                tags.append(tag)
        return tags

    def log_ood_examples(self, prefix: str, eps: float, sample_ids: Sequence[int], start: torch.Tensor,
                         attacked: torch.Tensor, target_image: torch.Tensor, target_points: torch.Tensor | None,
                         attacked_points: torch.Tensor | None) -> list[str]:
        """OOD images for the first `num_images` samples.

        start, attacked: (B, 1, H, W) the start image and the attacked one; target_image (B, 1, H, W) the
        in-distribution image whose prediction is the target; target_points, attacked_points (B, N, 2).
        """
        from diskrobust.visualize import COLORS, draw_contours

        self.log_legend("ood")
        step = eps_step(eps)
        tags = []
        for i in range(min(self.num_images, start.shape[0])):
            base = f"{prefix}/{eps_tag(eps)}/s{int(sample_ids[i]):03d}"
            contours, colors = [], []
            if target_points is not None:
                contours.append(target_points[i].detach().cpu())
                colors.append(COLORS["clean"])
            if attacked_points is not None:
                contours.append(attacked_points[i].detach().cpu())
                colors.append(COLORS["attacked"])
            views = {
                "start": _gray_rgb(start[i]),
                "attacked": _gray_rgb(attacked[i]),
                "target_image": draw_contours(target_image[i].detach().cpu(), contours[:1], colors[:1])
                if contours else _gray_rgb(target_image[i]),
                "contours": draw_contours(attacked[i].detach().cpu(), contours, colors)
                if contours else _gray_rgb(attacked[i]),
            }
            for view, img in views.items():
                tag = f"{base}/{view}"
                self.writer.add_image(tag, img, step, dataformats="CHW")
                tags.append(tag)
        return tags

    def log_legend(self, kind: str) -> None:
        """The caption of one kind of image panel ("ind" or "ood"), once per logger."""
        done = self.__dict__.setdefault("_legends", set())
        if kind not in done:
            self.writer.add_text(f"legend/{kind}", LEGENDS[kind], 0)
            done.add(kind)

    def log_summary(self, report_markdown: str, plot_paths: Sequence[str | Path] = ()) -> list[str]:
        """The sweep's results in forms smoothing cannot distort: the report as text, the curves as images."""
        import numpy as np
        from PIL import Image

        self.writer.add_text("summary/how_to_read", HOW_TO_READ, 0)
        self.writer.add_text("summary/report", report_markdown, 0)
        tags = ["summary/how_to_read", "summary/report"]
        for path in plot_paths:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            tag = f"summary/plots/{Path(path).stem}"
            self.writer.add_image(tag, rgb, 0, dataformats="HWC")
            tags.append(tag)
        return tags

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if this logger opened it."""
        self.writer.flush()
        if self._owns_writer:
            self.writer.close()
