"""Whole-image disk-shape inference for serving (the MONAI Label app in app/), free of MONAI Label.

Modules in the order data flows (docs/monai_label.md tells the user's side):

- ``io``: one sagittal slice of a 2D/3D NIfTI in the contract's orientation, size limits from the
  header, the label written back on the image's own grid.
- ``params``: request parameters and datastore ids, checked (ValueError naming the parameter).
- ``prediction``: patches cut as the bundles cut them, the network's points in image px, re-centring,
  the agreement of the two heads, the robustness probe, the bundle network.
- ``disk_search``: candidates from the segmentation head, the spine's column of disks, gap probes.
- ``levels``: level names from the column's lower end (the disk above the sacrum is L5/S1).
- ``service``: one request end to end, and its outputs (label image, contour JSON).
- ``server``: what the MONAI Label server gets on top (request guard, infer endpoint with a time
  limit, checked datastore); imports MONAI Label, so it is not imported here.
"""

from diskrobust.serving.disk_search import best_column, disk_components, probe_disk, search_disks, segmentation_map
from diskrobust.serving.io import (
    ImageTooLarge,
    SagittalSlice,
    check_image_size,
    load_sagittal_slice,
    scale_intensity,
    slice_label_volume,
    write_label_image,
)
from diskrobust.serving.levels import FIRST_DISK_LABEL, disk_level_name, level_labels, name_levels
from diskrobust.serving.params import check_id, parse_params_json, parse_points, parse_request, parse_slice_index
from diskrobust.serving.prediction import (
    DEFAULT_PATCH_SPACING_MM,
    DiskPrediction,
    InferenceTimeout,
    cut_patches,
    disk_robustness,
    load_bundle_network,
    predict_disks,
    run_network,
)
from diskrobust.serving.service import NO_DISKS_FOUND, DiskShapeService, disks_label_image, disks_to_json

__all__ = [
    "DEFAULT_PATCH_SPACING_MM", "FIRST_DISK_LABEL", "NO_DISKS_FOUND",
    "DiskPrediction", "DiskShapeService", "ImageTooLarge", "InferenceTimeout", "SagittalSlice",
    "best_column", "check_id", "check_image_size", "cut_patches", "disk_components", "disk_level_name",
    "disk_robustness", "disks_label_image", "disks_to_json", "level_labels", "load_bundle_network",
    "load_sagittal_slice", "name_levels", "parse_params_json", "parse_points", "parse_request",
    "parse_slice_index", "predict_disks", "probe_disk", "run_network", "scale_intensity", "search_disks",
    "segmentation_map", "slice_label_volume", "write_label_image",
]
