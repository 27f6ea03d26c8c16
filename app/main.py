"""diskrobust MONAI Label app: serves the lumbar_disk_shape bundle from its local folder (no download).

Start (docs/monai_label.md):
    python -m diskrobust.serving.launch --studies <dir> [--port 8000] [--conf key value ...]
or  monailabel start_server --app app --studies <dir> --host 127.0.0.1 --port 8000 --conf sam2 false [...]

Options (--conf key value):
  bundle_path       the bundle folder (default: <repo>/bundles/lumbar_disk_shape)
  weights           the weights file (default: <bundle_path>/models/model.pt)
  network_def       JSON object of network_def arguments to override, e.g. '{"width": 8}'
  threshold         probability threshold of the automatic disk search (default 0.5)
  robustness        also serve ``disk_shape_robustness`` (contour displacement under PGD; default true)
  safety settings   cors_origins, allow_remote, max_request_mb, max_image_side_px, infer_timeout_s,
                    infer_workers (diskrobust.serving.server.ServerOptions; safe defaults)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.utils.others.generic import strtobool

from diskrobust.serving.server import ServerOptions, checked_datastore_class, install
from lib.infers import DiskShapeInfer, DiskShapeRobustnessInfer

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "lumbar_disk_shape"


class DiskRobustApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.options = ServerOptions.from_conf(conf)
        # MONAI Label builds its FastAPI app before it creates this instance (in its lifespan): guard it
        # now, before the first request (diskrobust.serving.server).
        import monailabel.app

        install(monailabel.app.app, self.options)
        self.bundle_path = os.path.realpath(os.path.expanduser(conf.get("bundle_path") or str(DEFAULT_BUNDLE)))
        self.weights = conf.get("weights") or None
        try:
            self.network_overrides = json.loads(conf.get("network_def") or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"--conf network_def must be a JSON object, e.g. '{{\"width\": 8}}': {err}") from None
        if not isinstance(self.network_overrides, dict):
            raise ValueError(f"--conf network_def must be a JSON object, got {self.network_overrides!r}")
        if not os.path.isdir(self.bundle_path):
            raise FileNotFoundError(f"bundle_path {self.bundle_path}: folder not found (--conf bundle_path ...)")
        logger.info(f"diskrobust app: bundle {self.bundle_path}; weights {self.weights or 'models/model.pt'}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="diskrobust",
            description="Lumbar intervertebral disk shapes (176-point contours) from sagittal MR",
            version="0.1.0",
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return checked_datastore_class()(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        common = dict(weights=self.weights, network_overrides=self.network_overrides,
                      max_image_side_px=self.options.max_image_side_px)
        infers: Dict[str, InferTask] = {"disk_shape": DiskShapeInfer(self.bundle_path, self.conf, **common)}
        if strtobool(self.conf.get("robustness", "true")):
            infers["disk_shape_robustness"] = DiskShapeRobustnessInfer(self.bundle_path, self.conf, **common)
        for name, task in infers.items():
            if not task.is_valid():
                logger.warning(f"model {name}: no weights or no configs/inference.json in the bundle; "
                               "train the bundle first (docs/monai_label.md)")
        return infers
