"""Python helpers the `lumbar_disk_shape` bundle configs call, so the JSON stays shallow and the logic is tested.

Sections: locating the bundle and the data, building the network, checkpoints and resuming, logging
transforms, distributed training, and the inference input/output transforms.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from diskrobust.data.errors import DataError

logger = logging.getLogger(__name__)

BUNDLE_NAME = "lumbar_disk_shape"
CHECKPOINT_PREFIX = "checkpoint"

# --------------------------------------------------------------------------------------------------
# command-line values


from diskrobust.config_values import as_bool  # noqa: E402,F401


# --------------------------------------------------------------------------------------------------
# locating the bundle and the data


def _looks_like_bundle(path: Path) -> bool:
    return (path / "configs" / "metadata.json").is_file()


def _config_dirs_in_call_stack() -> list[Path]:
    """Config folders of the MONAI bundle workflow that is parsing us, found on the call stack.

    A config expression cannot see which file it came from, but ConfigWorkflow keeps the folder of
    its first config file as `config_root_path`, and `monai.bundle.run` / `create_workflow` hold the
    `config_file` argument; both are on the stack while the config is being resolved.
    """
    found: list[Path] = []
    frame = inspect.currentframe()
    try:
        while frame is not None:
            local = frame.f_locals
            owner = local.get("self")
            # read the instance dict only: attribute access on arbitrary objects (ConfigParser) has side effects
            root = getattr(owner, "__dict__", {}).get("config_root_path") if owner is not None else None
            if isinstance(root, (str, Path)):
                found.append(Path(root))
            for key in ("config_file", "_config_files"):
                value = local.get(key)
                if isinstance(value, (str, Path)):
                    found.append(Path(value).parent)
                elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, Path)):
                    found.append(Path(value[0]).parent)
            frame = frame.f_back
    finally:
        del frame
    return found


def _config_dirs_in_argv(argv: Sequence[str]) -> list[Path]:
    found = []
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            first = value.strip("[]'\" ").split(",")[0].strip("'\" ")
            found.append(Path(first).parent)
    return found


def find_bundle_root(default: str | None = None) -> str:
    """The bundle's root folder (the one holding configs/), as an absolute path.

    Tried in order: `default` when given and it is a bundle; the folder of the config file being
    parsed (from the running ConfigWorkflow, or `--config_file` on the command line); the current
    directory, if it is the bundle; `bundles/lumbar_disk_shape` under the current directory (the repo
    root of a clone); the clone this package was installed from in editable mode. So `python -m monai.bundle run --config_file bundles/lumbar_disk_shape/configs/train.json`
    works from the repo root and `... --config_file configs/train.json` from the bundle folder.
    """
    candidates: list[Path] = []
    if default:
        candidates.append(Path(default))
    for cfg_dir in _config_dirs_in_call_stack() + _config_dirs_in_argv(sys.argv):
        candidates.append(cfg_dir.parent if cfg_dir.name == "configs" else cfg_dir)
    cwd = Path.cwd()
    candidates += [cwd, cwd.parent, cwd / "bundles" / BUNDLE_NAME]
    # an editable install (pip install -e <clone>) knows its clone
    candidates.append(Path(__file__).resolve().parents[2] / "bundles" / BUNDLE_NAME)
    for cand in candidates:
        if _looks_like_bundle(cand):
            return str(cand.resolve())
    raise FileNotFoundError(
        f"cannot find the {BUNDLE_NAME} bundle folder (tried {[str(c) for c in candidates]}); "
        "pass --bundle_root <path to bundles/lumbar_disk_shape>"
    )


def ensure_dataset(dataset_dir: str, phantom_subjects: int, seed: int) -> str:
    """Path of `dataset_dir`/datalist.json; generates the seeded phantom there first when the folder is missing
    or empty. A folder with other files but no datalist.json is refused (DataError), so user data is never
    mixed with a phantom."""
    from diskrobust.data.phantom import ensure_phantom

    folder = Path(dataset_dir).expanduser().resolve()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_rank() != 0:
        # rank 0 writes the phantom; the others wait for it instead of writing the same files at once
        torch.distributed.barrier()
        datalist = folder / "datalist.json"
        if not datalist.is_file():
            raise DataError(folder, "rank 0 did not produce datalist.json (see its log)")
        return str(datalist)
    if not (folder / "datalist.json").is_file():
        logger.info("no dataset in %s: generating the phantom (%d subjects, seed %d)", folder, phantom_subjects, seed)
    try:
        return str(ensure_phantom(folder, subjects=int(phantom_subjects), seed=int(seed)))
    finally:
        if distributed:
            torch.distributed.barrier()


def load_split(datalist: str, split: str) -> list[dict]:
    """Entries of one split of a datalist (absolute paths); DataError when missing or empty."""
    from diskrobust.data.dataset_io import load_datalist

    return load_datalist(datalist, split)


def fit_shape_pca(bank, save_path: str | None = None):
    """Fit the shape PCA on a training patch bank's contours and save it (npz) for later runs and the study.

    `bank` is `build_patch_bank(...)`'s result; only the training split may be passed here, so the
    augmentation never sees validation or test shapes.
    """
    from diskrobust.transforms import ShapePCA

    pca = ShapePCA.fit(_bank_points(bank))
    if save_path:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        pca.save(save_path)
    return pca


def _bank_points(bank) -> np.ndarray:
    """(M, N, 2) contour points of a PatchBank (patch px)."""
    return np.asarray(bank.points, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# network, checkpoints and resuming: moved to diskrobust.checkpoints / diskrobust.distributed

from diskrobust.checkpoints import (  # noqa: E402  (temporary re-export until the configs move)
    CHECKPOINT_PREFIX,
    BestModelState,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    read_checkpoint,
    resume_checkpoint,
    split_checkpoint,
    weights_digest,
)
from diskrobust.distributed import record_weights_digest, select_device  # noqa: E402


def load_state_dict_file(path: str, device: str | torch.device = "cpu") -> dict:
    """A state_dict from a file that holds one plainly or under "model"/"network" (weights_only load)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return split_checkpoint(read_checkpoint(path, device), path)[0]


def build_network(network_def: torch.nn.Module, device, ckpt: str = "", init_mean_shape=None) -> torch.nn.Module:
    """Move the network to `device` and give it its starting weights (ckpt, or the training mean shape)."""
    if ckpt:
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        load_weights(network_def, load_state_dict_file(ckpt), ckpt)
        logger.info("initial weights loaded from %s", ckpt)
    elif init_mean_shape is not None and getattr(network_def, "has_point_head", False):
        network_def.set_mean_shape(init_mean_shape)
    return network_def.to(select_device(device))


# --------------------------------------------------------------------------------------------------
# logging


def train_scalars(loss_fn, optimizer) -> Callable:
    """output_transform for Stats/TensorBoard handlers: trainer output -> {"train/loss", "train/<term>", "train/lr"}.

    DiskShapeLoss keeps its last call's terms in `last_terms`; the learning rate is read from the optimizer.
    """

    def transform(output) -> dict[str, float]:
        out = output[0] if isinstance(output, (list, tuple)) else output
        scalars = {"train/loss": float(torch.as_tensor(out["loss"]).detach())}
        for name, value in getattr(loss_fn, "last_terms", {}).items():
            scalars[f"train/{name}"] = float(value)
        scalars["train/lr"] = float(optimizer.param_groups[0]["lr"])
        return scalars

    return transform


# --------------------------------------------------------------------------------------------------
# distributed training: moved to diskrobust.distributed

from diskrobust.distributed import (  # noqa: E402
    distributed_backend,
    distributed_device,
    init_distributed,
    is_main_process,
    quiet_unless_main,
)


def attach_handlers(engine, handlers) -> None:
    """Attach `handlers` to `engine`, skipping None (handlers a config disabled, e.g. on ranks > 0)."""
    for handler in handlers or []:
        if handler is not None:
            handler.attach(engine)


# --------------------------------------------------------------------------------------------------
# inference: input patches and output conversion


def inference_items(input_image, input_disks: str = "") -> list[dict]:
    """Dataset items for inference.json: [{"image": path, "disks": path or ""}, ...].

    input_image: one NIfTI path or a list of them; input_disks: a JSON of disk centres or a contour
    JSON ("" = each image already is one S x S disk patch). With several images, input_disks may be
    a matching list.
    """
    images = [input_image] if isinstance(input_image, (str, Path)) else list(input_image)
    if not images or not all(str(i) for i in images):
        raise ValueError("inference needs input_image: a NIfTI image (or patch) path, e.g. --input_image img.nii.gz")
    disks = [input_disks] * len(images) if isinstance(input_disks, (str, Path)) else list(input_disks)
    if len(disks) != len(images):
        raise ValueError(f"{len(images)} input images but {len(disks)} disk files")
    return [{"image": str(i), "disks": str(d or "")} for i, d in zip(images, disks)]


def read_disk_positions(path: str, image_shape: Sequence[int]) -> list[dict]:
    """Disk centres (x, y) image px with level and SPIDER label, from a centres JSON or a contour JSON.

    Centres JSON: {"disks": [{"level": "L4/L5", "label": 202, "centre_px": [x, y]}, ...]}.
    Contour JSON (diskrobust-contours/1): each disk's centre is its contour's area centroid.
    Raises DataError naming the file and the problem.
    """
    from diskrobust.data.contours import contour_centroid
    from diskrobust.data.dataset_io import CONTOUR_FORMAT, read_contours_json

    path_ = Path(path)
    if not path_.is_file():
        raise DataError(path_, "disk positions file not found")
    try:
        doc = json.loads(path_.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path_, f"not valid JSON: {err}") from err
    if isinstance(doc, dict) and doc.get("format") == CONTOUR_FORMAT:
        contours = read_contours_json(path_, image_shape=image_shape)
        return [
            {"level": d["level"], "label": int(d["label"]), "centre_px": contour_centroid(d["points_px"])}
            for d in contours["disks"]
        ]
    if not isinstance(doc, dict) or not isinstance(doc.get("disks"), list) or not doc["disks"]:
        raise DataError(path_, "expected {\"disks\": [{\"level\", \"label\", \"centre_px\": [x, y]}, ...]} "
                               "or a diskrobust-contours/1 file")
    h, w = int(image_shape[0]), int(image_shape[1])
    out = []
    for i, disk in enumerate(doc["disks"]):
        if not isinstance(disk, dict) or "centre_px" not in disk:
            raise DataError(path_, f"disk {i}: needs 'centre_px' [x, y] (and 'level', 'label')")
        try:
            centre = np.asarray(disk["centre_px"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(path_, f"disk {i}: centre_px is not numeric: {err}") from err
        if centre.shape != (2,) or not np.isfinite(centre).all():
            raise DataError(path_, f"disk {i}: centre_px must be two finite numbers [x, y], got {disk['centre_px']}")
        if not (-0.5 <= centre[0] <= w - 0.5 and -0.5 <= centre[1] <= h - 0.5):
            raise DataError(path_, f"disk {i}: centre_px {centre.tolist()} lies outside the {h}x{w} image")
        label = int(disk.get("label", 201 + i))
        out.append({"level": str(disk.get("level", f"disk{label}")), "label": label, "centre_px": centre})
    return out


def collate_patches(batch: Sequence):
    """DataLoader collate_fn for inference: items are patch dicts or lists of them (one per disk); flattens both."""
    from monai.data import list_data_collate

    flat: list = []
    for item in batch:
        flat.extend(item if isinstance(item, list) else [item])
    return list_data_collate(flat)


class DiskInferenceInputd:
    """Inference input -> network-ready patch dicts (the `preprocessing` of inference.json).

    Input dict: {"image": NIfTI path, "disks": centres/contour JSON path or ""}.
    * with disks: one patch per disk, cut as the training patch bank does (image percentile-scaled with
      ScaleIntensityMR, `extract_patch`: S x S at `patch_spacing_mm` centred on the disk, min-max scaled
      to [0, 1]); returns a list (MONAI's collate flattens it).
    * without: the image is one S x S patch, min-max scaled; returns one dict (what MONAI Label's
      BundleInferTask passes for a single patch).
    Each output dict: "image" (1, S, S) float32, "centre_px" (2,) and "scale" (2,) (x, y) so that
    image_px = (patch_px - S / 2) * scale + centre_px, "level", "disk_label", "subject", "source",
    "source_shape" (2,), "spacing_mm" (2,) (row, col), "affine" (4, 4).
    """

    def __init__(self, image_key: str = "image", disks_key: str = "disks", patch_size: int = 128,
                 patch_spacing_mm: float = 0.5):
        self.image_key = image_key
        self.disks_key = disks_key
        self.patch_size = int(patch_size)
        self.patch_spacing_mm = float(patch_spacing_mm)

    def __call__(self, data: Mapping):
        from diskrobust.data.dataset_io import read_image
        from diskrobust.transforms import ScaleIntensityMR, extract_patch

        source = data[self.image_key]
        if not isinstance(source, (str, Path)):
            raise TypeError(f"DiskInferenceInputd expects a NIfTI path under {self.image_key!r}, got {type(source).__name__}")
        image, meta = read_image(source)
        name = Path(source).name
        subject = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(source).stem
        common = {
            "subject": subject,
            "source": str(source),
            "source_shape": np.asarray(image.shape, dtype=np.int64),
            "spacing_mm": np.asarray(meta["spacing_mm"], dtype=np.float64),
            "affine": np.asarray(meta["affine"], dtype=np.float64),
        }
        disks_path = data.get(self.disks_key) or ""
        s = self.patch_size
        if not disks_path:
            if image.shape != (s, s):
                raise DataError(source, f"without a disk positions file the image must be one {s}x{s} patch, "
                                        f"got {image.shape}; pass --input_disks centres.json")
            lo, hi = float(image.min()), float(image.max())
            patch = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
            return {**common, "image": patch[None].astype(np.float32),
                    "centre_px": np.array([s / 2.0, s / 2.0], np.float32), "scale": np.ones(2, np.float32),
                    "level": "patch", "disk_label": 201}
        # as the training patch bank: percentile scaling of the whole image, then min-max per patch
        scaled = np.asarray(ScaleIntensityMR()(image[None]), dtype=np.float32)[0]
        out = []
        for disk in read_disk_positions(disks_path, image.shape):
            patch, scale = extract_patch(scaled, disk["centre_px"], meta["spacing_mm"], s, self.patch_spacing_mm)
            out.append({**common, "image": patch.astype(np.float32),
                        "centre_px": np.asarray(disk["centre_px"], np.float32), "scale": scale.astype(np.float32),
                        "level": disk["level"], "disk_label": int(disk["label"])})
        return out


class DiskNetOutputd:
    """Postprocessing for one decollated sample (MONAI Label): {"pred": {"pred": (N, 2), "seg": (1, S, S)}} ->
    "pred" = disk mask (1, S, S) uint8 from the seg head (logit > 0), or the filled contour without one,
    and "points" = (N, 2) float32 (x, y) patch px when the point head exists."""

    def __init__(self, key: str = "pred", points_key: str = "points"):
        self.key = key
        self.points_key = points_key

    def __call__(self, data: Mapping) -> dict:
        from diskrobust.data.contours import contour_to_mask

        d = dict(data)
        out = d[self.key]
        if not isinstance(out, Mapping):
            return d  # already converted
        points = out.get("pred")
        if points is not None:
            d[self.points_key] = np.asarray(torch.as_tensor(points).detach().cpu(), dtype=np.float32)
        if out.get("seg") is not None:
            d[self.key] = (torch.as_tensor(out["seg"]).detach().cpu() > 0).to(torch.uint8)
        elif points is not None:
            shape = tuple(d["image"].shape[-2:])
            d[self.key] = torch.as_tensor(contour_to_mask(d[self.points_key], shape)[None].astype(np.uint8))
        return d
