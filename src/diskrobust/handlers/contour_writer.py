"""Write inference results per source image: a contour JSON (image px and mm) and a disk label mask NIfTI."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["DiskContourWriter", "contours_to_label_mask"]


def contours_to_label_mask(disks: list[dict], shape) -> np.ndarray:
    """(H, W) uint16 SPIDER label mask from disks [{"label", "points_px" (N, 2)}]: each disk's filled contour.

    Disks are painted in increasing label order, so where predicted contours overlap the higher label wins.
    """
    from diskrobust.data.contours import contour_to_mask

    mask = np.zeros(tuple(int(s) for s in shape), dtype=np.uint16)
    for disk in sorted(disks, key=lambda d: int(d["label"])):
        mask[contour_to_mask(np.asarray(disk["points_px"]), mask.shape)] = int(disk["label"])
    return mask


def _item(value, i):
    v = value[i]
    return v.detach().cpu().numpy() if torch.is_tensor(v) else v


class DiskContourWriter:
    """Collect the point head's predictions per source image and write them when the evaluator completes.

    Attach to a SupervisedEvaluator (decollate=False) fed by the inference chain's patches
    (`diskrobust.transforms.inference_chain`). For each source image `<subject>` it writes into `output_dir`:
    * `<subject>_contours.json` (diskrobust-contours/1: per disk level, label, points_px in image px and
      points_mm), points mapped back with image_px = (patch_px - S / 2) * scale + centre_px;
    * `<subject>_disks.nii.gz`: uint16 mask with each disk's filled contour set to its SPIDER label
      (201 = L5/S1 ...), same affine as the input image.
    `written` lists the files of the last run.
    """

    def __init__(self, output_dir: str, patch_size: int = 128):
        self.output_dir = Path(output_dir)
        self.patch_size = int(patch_size)
        self._images: OrderedDict[str, dict] = OrderedDict()
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._images = OrderedDict()

    def _collect(self, engine: Engine) -> None:
        from diskrobust.transforms import patch_points_to_image

        batch = engine.state.batch
        pred = engine.state.output["pred"]
        if "pred" not in pred:
            raise ValueError("DiskContourWriter needs the point head's output 'pred'")
        points = pred["pred"].detach().cpu().double().numpy()
        for i in range(points.shape[0]):
            source = str(_item(batch["source"], i))
            entry = self._images.setdefault(source, {
                "subject": str(_item(batch["subject"], i)),
                "shape": np.asarray(_item(batch["source_shape"], i)).astype(int).tolist(),
                "spacing_mm": np.asarray(_item(batch["spacing_mm"], i), dtype=np.float64).tolist(),
                "affine": np.asarray(_item(batch["affine"], i), dtype=np.float64),
                "disks": [],
            })
            centre = np.asarray(_item(batch["centre_px"], i), dtype=np.float64)
            scale = np.asarray(_item(batch["scale"], i), dtype=np.float64)
            entry["disks"].append({
                "level": str(_item(batch["level"], i)),
                "label": int(_item(batch["disk_label"], i)),
                "points_px": patch_points_to_image(points[i], centre, scale, self.patch_size),
            })

    def _write(self, engine: Engine) -> None:
        from diskrobust.data.dataset_io import write_contours_json, write_image_nifti

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.written = []
        for entry in self._images.values():
            disks = sorted(entry["disks"], key=lambda d: d["label"])
            json_path = self.output_dir / f"{entry['subject']}_contours.json"
            write_contours_json(json_path, entry["subject"], entry["shape"], entry["spacing_mm"], disks)
            mask_path = self.output_dir / f"{entry['subject']}_disks.nii.gz"
            write_image_nifti(mask_path, contours_to_label_mask(disks, entry["shape"]), entry["affine"])
            self.written += [json_path, mask_path]
            engine.logger.info("wrote %s and %s (%d disks)", json_path, mask_path, len(disks))
