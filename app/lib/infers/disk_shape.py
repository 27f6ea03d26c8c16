"""MONAI Label infer tasks ``disk_shape`` and ``disk_shape_robustness``: disk contours and a disk label
image for a sagittal MR image.

A thin shell around ``diskrobust.serving`` (tested without the server in tests/test_monailabel_app.py):
this module only turns a MONAI Label request into arguments (``serving.params.parse_request``), caches
the network per device (reloaded when the weights file changes), maps errors to HTTP statuses
without server paths, and writes the label file MONAI Label sends back. Parameters: docs/monai_label.md.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from diskrobust.data.errors import DataError
from diskrobust.serving import (
    DiskShapeService,
    InferenceTimeout,
    disk_robustness,
    disks_label_image,
    disks_to_json,
    level_labels,
    load_bundle_network,
    parse_request,
    scale_intensity,
    write_label_image,
)
from diskrobust.serving.io import ImageTooLarge

logger = logging.getLogger(__name__)

NUM_LEVELS = 5  # L5/S1 .. L1/L2, the lumbar disks


class DiskShapeInfer(BasicInferTask):
    """Serve bundles/lumbar_disk_shape: ``network_def`` from configs/inference.json, weights models/model.pt."""

    robustness = False

    def __init__(self, bundle_path: str, conf: Optional[Dict[str, str]] = None, weights: Optional[str] = None,
                 network_overrides: Optional[Dict[str, Any]] = None, description: Optional[str] = None,
                 max_image_side_px: Optional[int] = None):
        conf = conf or {}
        self.bundle_path = str(bundle_path)
        self.weights = str(weights) if weights else os.path.join(self.bundle_path, "models", "model.pt")
        self.network_overrides = dict(network_overrides or {})
        self.max_image_side_px = max_image_side_px
        meta = self._metadata()
        self.version = meta.get("version", "")
        super().__init__(
            path=self.weights,
            network=None,
            type=InferType.SEGMENTATION,
            labels=level_labels(NUM_LEVELS),
            dimension=2,
            description=description or f"Lumbar disk contours (176 points) and disk labels: {meta.get('name', 'lumbar_disk_shape')}",
            config={"slice_index": -1, "threshold": float(conf.get("threshold", 0.5))},
            load_strict=True,
        )
        self._lock = threading.Lock()
        self._cache: Dict[str, Tuple[float, Any]] = {}

    def _metadata(self) -> Dict[str, Any]:
        path = Path(self.bundle_path) / "configs" / "metadata.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning(f"bundle metadata not readable: {path}")
            return {}

    def info(self) -> Dict[str, Any]:
        i = super().info()
        i["version"] = self.version
        i["network_overrides"] = self.network_overrides
        return i

    def is_valid(self) -> bool:
        return os.path.isfile(self.weights) and os.path.isfile(os.path.join(self.bundle_path, "configs", "inference.json"))

    # BasicInferTask's abstract steps: this task runs its own pipeline in __call__.
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def network_for(self, device: str):
        """The bundle network on ``device``, loaded once and again whenever the weights file changes."""
        mtime = os.path.getmtime(self.weights) if os.path.exists(self.weights) else -1.0
        with self._lock:
            cached = self._cache.get(device)
            if cached is None or cached[0] != mtime:
                try:
                    network = load_bundle_network(self.bundle_path, self.weights, device, self.network_overrides)
                except DataError as err:
                    logger.error(f"cannot load the model: {err}")
                    raise HTTPException(status_code=500, detail="the server cannot load its model; see the server log") from None
                self._cache[device] = (mtime, network)
            return self._cache[device][1]

    def clear(self):
        with self._lock:
            self._cache.clear()

    def run(self, image: str, args: Dict[str, Any], device: str, deadline: Optional[float]) -> Tuple[str, Dict[str, Any]]:
        """Infer one image: (label file path, result JSON)."""
        network = self.network_for(device)
        service = DiskShapeService(network, threshold=args["threshold"],
                                   **({"max_side_px": self.max_image_side_px} if self.max_image_side_px else {}))
        sl, disks = service.infer(image, args["centres"], args["slice_index"], deadline=deadline)
        if self.robustness:
            scores = disk_robustness(network, scale_intensity(sl.image), sl.spacing_mm, disks, args["eps"],
                                     args["steps"], args["tolerance_mm"])
            for disk, score in zip(disks, scores):
                disk.extra["robustness"] = score
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="disk_shape_")
        os.close(fd)
        write_label_image(out_path, sl, disks_label_image(disks, sl.image.shape))
        result = disks_to_json(disks, sl)
        result["disk_search"] = "given" if len(args["centres"]) else "automatic"
        return out_path, result

    def __call__(self, request, callbacks=None) -> Tuple[Optional[str], Dict[str, Any]]:
        begin = time.time()
        req = dict(self._config)
        req.update(request)
        device = name_to_device(req.get("device", "cuda"))
        image = req.get("image")
        if not isinstance(image, str) or not os.path.isfile(image):
            raise HTTPException(status_code=404, detail="image not found: give the id of an image in the datastore or upload a file")
        try:
            args = parse_request(req, robustness=self.robustness)
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        deadline = req.get("deadline")
        try:
            label_path, result = self.run(image, args, device, deadline if isinstance(deadline, float) else None)
        except InferenceTimeout as err:
            raise HTTPException(status_code=503, detail=str(err)) from None
        except ImageTooLarge as err:
            raise HTTPException(status_code=422, detail=err.problem) from None
        except DataError as err:  # about the request's image: the client's file
            raise HTTPException(status_code=422, detail=err.problem) from None
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        result["label_names"] = self.labels
        result["latencies"] = {"total": round(time.time() - begin, 3), "transform": None}
        logger.info(f"{'disk_shape_robustness' if self.robustness else 'disk_shape'}: "
                    f"{len(result['disks'])} disk(s) in {result['latencies']['total']} s")
        return label_path, result


class DiskShapeRobustnessInfer(DiskShapeInfer):
    """``disk_shape_robustness``: ``disk_shape`` plus, per disk, how far its contour moves under PGD.

    Extra request parameters: ``eps`` (L-inf budget on [0, 1] patch intensities, default 0.03, at most
    0.3), ``steps`` (PGD steps, default 10, at most 200) and ``tolerance_mm`` (default 1.0). Each disk
    in the JSON gets ``"robustness": {..., "mean_displacement_mm", "max_displacement_mm",
    "exceeds_tolerance"}``.
    """

    robustness = True

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("description", "Lumbar disk contours and their displacement under a small PGD attack")
        super().__init__(*args, **kwargs)
        self._config.update({"eps": 0.03, "steps": 10, "tolerance_mm": 1.0})
