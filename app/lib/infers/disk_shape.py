"""MONAI Label infer task ``disk_shape``: disk contours and a disk label image for a sagittal MR image.

A thin shell around ``diskrobust.serving`` (tested without the server in tests/test_monailabel_app.py):
this module only turns a MONAI Label request into arguments, caches the network per device (reloaded
when models/model.pt changes) and writes the label file MONAI Label sends back.

Request parameters (the ``params`` form field of POST /infer/disk_shape, or a client's options):
  foreground   [[x, y], ...] disk centres in image px of the slice (x = column, y = row, contract
               orientation; a third coordinate is ignored). Empty or absent: the disks are searched for.
  slice_index  sagittal slice of a 3D image (default: the middle one); ignored for 2D images.
  threshold    probability threshold of the automatic search, in (0, 1) (default 0.5).
  device       "cpu", "cuda", ... (MONAI Label's own option).
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

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from diskrobust.data.errors import DataError
from diskrobust.serving import (
    DiskShapeService,
    disk_level_name,
    disk_robustness,
    disks_label_image,
    disks_to_json,
    load_bundle_network,
    parse_points,
    parse_slice_index,
    scale_intensity,
    write_label_image,
)

logger = logging.getLogger(__name__)

NUM_LEVELS = 5  # L5/S1 .. L1/L2, the disks the phantom and the training data hold


class ImageNotFound(ValueError):
    """The request names no image, or one the datastore does not hold."""


class BadRequest(MONAILabelException):
    """A request the task cannot serve because of its input (shown to the client as HTTP 400)."""


def _http_error(status: int, message: str) -> Exception:
    """An error FastAPI turns into an HTTP status (MONAI Label has no handler of its own: anything else is a 500)."""
    try:
        from fastapi import HTTPException

        return HTTPException(status_code=status, detail=message)
    except ImportError:  # used outside the server
        return BadRequest(MONAILabelError.INVALID_INPUT, message)


class DiskShapeInfer(BasicInferTask):
    """Serve bundles/lumbar_disk_shape: ``network_def`` from configs/inference.json, weights models/model.pt."""

    def __init__(self, bundle_path: str, conf: Optional[Dict[str, str]] = None, weights: Optional[str] = None,
                 network_overrides: Optional[Dict[str, Any]] = None, description: Optional[str] = None):
        conf = conf or {}
        self.bundle_path = str(bundle_path)
        self.weights = str(weights) if weights else os.path.join(self.bundle_path, "models", "model.pt")
        self.network_overrides = dict(network_overrides or {})
        meta = self._metadata()
        self.version = meta.get("version", "")
        super().__init__(
            path=self.weights,
            network=None,
            type=InferType.SEGMENTATION,
            labels={disk_level_name(201 + i): 201 + i for i in range(NUM_LEVELS)},
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
        i["bundle_path"] = self.bundle_path
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
                    raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, str(err)) from err
                self._cache[device] = (mtime, network)
            return self._cache[device][1]

    def clear(self):
        with self._lock:
            self._cache.clear()

    def parse_request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Validated arguments from a request; ValueError names the bad parameter."""
        image = request.get("image")
        if not isinstance(image, str) or not image or not os.path.isfile(image):
            raise ImageNotFound("image not found: give the id of an image in the datastore (?image=...) or upload a file")
        threshold = request.get("threshold", 0.5)
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
        return {
            "image": image,
            "centres": parse_points(request.get("foreground"), "foreground"),
            "slice_index": parse_slice_index(request.get("slice_index")),
            "threshold": threshold,
        }

    def run(self, args: Dict[str, Any], device: str) -> Tuple[str, Dict[str, Any]]:
        """Infer one image: (label file path, result JSON)."""
        network = self.network_for(device)
        service = DiskShapeService(network, threshold=args["threshold"])
        sl, disks = service.infer(args["image"], args["centres"], args["slice_index"])
        label = disks_label_image(disks, sl.image.shape)
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="disk_shape_")
        os.close(fd)
        write_label_image(out_path, sl, label)
        result = disks_to_json(disks, sl)
        result["disk_search"] = "given" if len(args["centres"]) else "automatic"
        return out_path, result

    def __call__(self, request, callbacks=None) -> Tuple[Optional[str], Dict[str, Any]]:
        begin = time.time()
        req = dict(self._config)
        req.update(request)
        device = name_to_device(req.get("device", "cuda"))
        try:
            args = self.parse_request(req)
        except ImageNotFound as err:
            raise _http_error(404, str(err)) from err
        except ValueError as err:
            raise _http_error(400, str(err)) from err
        try:
            label_path, result = self.run(args, device)
        except DataError as err:
            raise _http_error(422 if err_is_image(err, args["image"]) else 500, str(err)) from err
        except ValueError as err:
            raise _http_error(400, str(err)) from err
        result["label_names"] = self.labels
        result["latencies"] = {"total": round(time.time() - begin, 3), "transform": None}
        logger.info(f"disk_shape: {len(result['disks'])} disk(s) in {result['latencies']['total']} s")
        return label_path, result


def err_is_image(err: DataError, image_path: str) -> bool:
    """Whether a DataError is about the request's image (the client's fault) rather than the bundle."""
    return str(image_path) in str(err)


class DiskShapeRobustnessInfer(DiskShapeInfer):
    """``disk_shape_robustness``: ``disk_shape`` plus, per disk, how far its contour moves under PGD.

    Extra request parameters: ``eps`` (L-inf budget on [0, 1] patch intensities, default 0.03, at most
    0.3) and ``steps`` (PGD steps, default 10, at most 200). Each disk in the JSON gets
    ``"robustness": {"eps", "steps", "mean_displacement_px", "max_displacement_px",
    "mean_displacement_mm", "max_displacement_mm"}``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("description", "Lumbar disk contours and their displacement under a small PGD attack")
        super().__init__(*args, **kwargs)
        self._config.update({"eps": 0.03, "steps": 10})

    def parse_request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        args = super().parse_request(request)
        try:
            eps = float(request.get("eps", 0.03))
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a number in (0, 0.3], got {request.get('eps')!r}") from None
        if not 0.0 < eps <= 0.3:
            raise ValueError(f"eps must be a number in (0, 0.3], got {request.get('eps')!r}")
        steps = request.get("steps", 10)
        if isinstance(steps, bool) or not isinstance(steps, (int, float, str)):
            raise ValueError(f"steps must be an integer in 1..200, got {steps!r}")
        try:
            steps_f = float(steps)
        except ValueError:
            raise ValueError(f"steps must be an integer in 1..200, got {steps!r}") from None
        if steps_f != int(steps_f) or not 1 <= steps_f <= 200:
            raise ValueError(f"steps must be an integer in 1..200, got {steps!r}")
        args.update(eps=eps, steps=int(steps_f))
        return args

    def run(self, args: Dict[str, Any], device: str) -> Tuple[str, Dict[str, Any]]:
        network = self.network_for(device)
        service = DiskShapeService(network, threshold=args["threshold"])
        sl, disks = service.infer(args["image"], args["centres"], args["slice_index"])
        scores = disk_robustness(network, scale_intensity(sl.image), sl.spacing_mm, disks, args["eps"], args["steps"])
        for disk, score in zip(disks, scores):
            disk.extra["robustness"] = score
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="disk_shape_robustness_")
        os.close(fd)
        write_label_image(out_path, sl, disks_label_image(disks, sl.image.shape))
        result = disks_to_json(disks, sl)
        result["disk_search"] = "given" if len(args["centres"]) else "automatic"
        return out_path, result
