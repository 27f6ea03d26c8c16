"""The attack bundle's wiring: what `bundles/lumbar_disk_attack/configs/evaluate.json` runs.

The bundle's settings are plain config ids (`seed`, `num_samples`, `ind#steps`, `ood#eps_rms`, ...)
and its profiles are MONAI override files (`configs/profiles/paper.json`), so every setting can be
given on the command line with `#`. `RobustnessEvaluation` receives them already resolved: resolving
ids has no side effect; `initialize()` checks every input and generates the phantom if needed,
`run()` does the sweep.

`attack_bundle_args` turns the older description of an evaluation (a profile name and a nested
`sweep_overrides` dict, as the study configs hold) into the config files and `#` overrides of a
bundle command.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diskrobust.bundle_checks import as_bool, check_number, is_bundle_run, parse_bundle_command
from diskrobust.data.errors import ConfigError, DataError
from diskrobust.robustness.config import SWEEP_SETTINGS, SweepConfig
from diskrobust.robustness.engine import run_robustness_sweep
from diskrobust.robustness.network import check_heads, file_sha256, load_surrogate, network_outputs
from diskrobust.robustness.tensorboard import AttackTensorBoardLogger

__all__ = ["ALSO_ACCEPTED", "RETIRED_SETTINGS", "RobustnessEvaluation", "attack_bundle_args", "load_sweep_config",
           "network_params"]

logger = logging.getLogger(__name__)

_PROFILE_ADVICE = ("a profile is a config file now: --config_file \"['bundles/lumbar_disk_attack/configs/evaluate.json',"
                   "'bundles/lumbar_disk_attack/configs/profiles/paper.json']\"")
# Settings that also take null: None evaluates every test patch (SweepConfig.num_samples, OODConfig.num_samples).
ALSO_ACCEPTED = {"num_samples": [None], "ood#num_samples": [None], "channels_last": ["auto"]}
# Settings of earlier versions of the bundle, refused with what to do instead (bundle_checks.check_command_line).
RETIRED_SETTINGS = {
    "profile": _PROFILE_ADVICE + " (the id `profile` only names the profile in the report)",
    "profiles_dir": _PROFILE_ADVICE,
    "sweep_overrides": "give each setting as an id of configs/evaluate.json, e.g. --ind#steps 5 --ood#enabled false "
                       "--num_samples 4",
    "network_def": "the network is built from the model file's description; give --width, --patch_size, "
                   "--patch_spacing_mm (or --network_args) only for a plain state_dict",
    "ood#eps": "the OOD budget is per pixel now: --ood#eps_rms \"[0.05]\" (absolute L2 = rms * sqrt(H * W))",
}


def attack_bundle_args(bundle_dir: str | Path, evaluation: Mapping[str, Any]) -> tuple[list[Path], dict[str, Any]]:
    """Config files and `#` overrides for the attack bundle from {"profile": name, "sweep_overrides": {...}, ...}.

    Other keys pass through as overrides. A nested dict under `ind` / `ood` / `audit` becomes `ind#key` ids
    (`{"ind": {"eps": {"linf": [0.1]}}}` -> `ind#eps#linf`).
    """
    bundle_dir = Path(bundle_dir)
    files = [bundle_dir / "configs" / "evaluate.json"]
    rest = dict(evaluation)
    profile = rest.pop("profile", None)
    if profile not in (None, "", "cpu-quick"):
        path = bundle_dir / "configs" / "profiles" / f"{profile}.json"
        if not path.is_file():
            known = sorted(p.stem for p in (bundle_dir / "configs" / "profiles").glob("*.json"))
            raise ConfigError(None, "evaluation#profile", f"no profile {profile!r} (known: {known})")
        files.append(path)

    def flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
        if isinstance(value, Mapping) and prefix.split("#")[0] in ("ind", "ood", "audit"):
            for k, v in value.items():
                flat(f"{prefix}#{k}", v, out)
        else:
            out[prefix] = value

    overrides: dict[str, Any] = {}
    for key, value in dict(rest.pop("sweep_overrides", {}) or {}).items():
        flat(key, value, overrides)
    for key, value in rest.items():
        flat(key, value, overrides)
    return files, overrides


def load_sweep_config(*config_files: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """The sweep settings of bundle config files (e.g. evaluate.json and a profile) with `#` overrides.

    The same merge as `python -m monai.bundle run --config_file "[...]" --ind#steps 5`; unknown override
    ids are refused like on the command line.
    """
    from monai.bundle import ConfigParser

    from diskrobust.bundle_checks import check_overrides

    files = [str(f) for f in config_files]
    merged = ConfigParser.load_config_files(files)
    source = " + ".join(files)
    check_overrides(dict(overrides or {}), merged, source=source, retired=RETIRED_SETTINGS,
                    also=ALSO_ACCEPTED)
    parser = ConfigParser(merged)
    parser.update(dict(overrides or {}))
    return SweepConfig.from_dict({k: parser[k] for k in SWEEP_SETTINGS if k in parser}, where=source)


def network_params(network: nn.Module) -> dict:
    """The DiskShapeNet hyper-parameters worth recording next to the results."""
    keys = ("in_channels", "num_points", "spatial_size", "width", "blocks", "has_point_head", "has_seg_head")
    params = {k: getattr(network, k) for k in keys if hasattr(network, k)}
    params["parameters"] = sum(p.numel() for p in network.parameters())
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _settings_source() -> str:
    """How the sweep settings are named in error messages: the config files of this bundle run."""
    import sys

    if is_bundle_run():
        try:
            files = parse_bundle_command(sys.argv[2:]).config_files
        except ConfigError:
            files = []
        if files:
            return " + ".join(files)
    return "the sweep settings"


class RobustnessEvaluation:
    """The attack bundle's workflow object: `initialize()` checks every input before any work; `run()` sweeps.

    Args:
        ckpt_path: a model file of lumbar_disk_shape (models/model.pt): the network and the patch geometry
            are built from its description (`diskrobust.checkpoints`); a plain state_dict needs `width`,
            `patch_size` and `patch_spacing_mm` (and `network_args` for other constructor arguments).
        output_dir: result folder.
        sweep: the sweep settings (ids `profile`, `seed`, ..., `ind`, `ood`), see `SweepConfig`.
        dataset_dir: a dataset folder with datalist.json; if it does not exist or is empty, the phantom
            is generated there in `initialize` (`phantom_subjects`, `phantom_seed`).
        datalist: a datalist file to use instead of `<dataset_dir>/datalist.json`.
        split: the datalist split to evaluate.
        device: torch device (default: CUDA if available).
        width, patch_size, patch_spacing_mm: None = the model file's; a value that disagrees with the
            model's description is refused naming both.
        network_args: further DiskShapeNet arguments for a plain state_dict (e.g. {"blocks": [2, 2, 2, 2]}).
        tensorboard: write TensorBoard events to `<output_dir>/tensorboard`.
        bundle_root: the bundle folder the default paths derive from (named in errors when they are missing).
    """

    def __init__(self, ckpt_path: str, output_dir: str, sweep: Mapping[str, Any],
                 dataset_dir: str | None = None, datalist: str | None = None, split: str = "test", device=None,
                 width: int | None = None, patch_size: int | None = None, patch_spacing_mm: float | None = None,
                 network_args: Mapping[str, Any] | None = None, phantom_subjects: int = 12,
                 phantom_seed: int = 0, tensorboard: bool = True, progress: bool = True, bundle_root: str = ""):
        self.network: nn.Module | None = None
        self.description: dict = {}
        self.ckpt_path = Path(ckpt_path)
        self.output_dir = Path(output_dir)
        self.sweep = dict(sweep)
        self.dataset_dir = None if dataset_dir in (None, "") else Path(dataset_dir)
        self.datalist = None if datalist in (None, "") else Path(datalist)
        self.split = split
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model_overrides: dict[str, Any] = dict(network_args or {})
        if width is not None:
            self.model_overrides["width"] = check_number(width, "width", minimum=1, integer=True)
        if patch_size is not None:
            self.model_overrides["patch_size"] = check_number(patch_size, "patch_size", minimum=8, integer=True)
        if patch_spacing_mm is not None:
            self.model_overrides["patch_spacing_mm"] = float(check_number(
                patch_spacing_mm, "patch_spacing_mm", minimum=0, min_inclusive=False))
        self.patch_size: int | None = None
        self.patch_spacing_mm: float | None = None
        self._lock = None
        self.phantom_subjects = check_number(phantom_subjects, "phantom_subjects", minimum=1, integer=True)
        self.phantom_seed = check_number(phantom_seed, "phantom_seed", minimum=0, integer=True)
        self.tensorboard = as_bool(tensorboard, "tensorboard")
        self.progress = as_bool(progress, "progress")
        self.bundle_root = str(bundle_root)
        self.config: SweepConfig | None = None
        self.surrogate: nn.Module | None = None
        self.dataset = None
        self.datalist_path: Path | None = None

    def _missing(self, path: Path, what: str) -> DataError:
        root = Path(self.bundle_root) if self.bundle_root else None
        hint = ""
        if root is not None and not (root / "configs" / "evaluate.json").is_file():
            hint = (f" (bundle_root {self.bundle_root!r} is not the bundle folder seen from {Path.cwd()}: run from "
                    f"the repository root or pass --bundle_root <path to lumbar_disk_attack>)")
        return DataError(path, f"{what} not found{hint}")

    def _datalist_path(self) -> Path:
        if self.datalist is not None:
            if not self.datalist.is_file():
                raise self._missing(self.datalist, "datalist file")
            return self.datalist
        if self.dataset_dir is None:
            raise ConfigError(None, "dataset_dir, datalist", "give a dataset folder or a datalist file")
        from diskrobust.data.phantom import ensure_phantom

        # ensure_phantom generates only into a missing or empty folder (DataError otherwise), so a user's
        # dataset folder without a datalist is never overwritten.
        return Path(ensure_phantom(self.dataset_dir, self.phantom_subjects, self.phantom_seed, progress=self.progress))

    def initialize(self) -> RobustnessEvaluation:
        """Validate everything (DataError / ConfigError naming the file or setting) before any work."""
        unknown = sorted(set(self.sweep) - set(SWEEP_SETTINGS))
        if unknown:
            raise ConfigError(None, "evaluation#sweep", f"unknown keys {unknown}; known: {list(SWEEP_SETTINGS)}")
        self.config = SweepConfig.from_dict(self.sweep, where=_settings_source())
        if not self.ckpt_path.is_file():
            raise self._missing(self.ckpt_path, "checkpoint file")
        from diskrobust.checkpoints import build_model_from_checkpoint
        from diskrobust.run_lock import RunLock, RunLockedError

        # the network and the patches as the model was trained (an explicit override that disagrees is refused)
        self.network, self.description = build_model_from_checkpoint(self.ckpt_path, self.device, self.model_overrides)
        self.patch_size = int(self.description["patch"]["size"])
        self.patch_spacing_mm = float(self.description["patch"]["spacing_mm"])
        datalist = self._datalist_path()
        from diskrobust.datasets import DiskPatchDataset

        self.dataset = DiskPatchDataset(str(datalist), self.split, patch_size=self.patch_size,
                                        patch_spacing_mm=self.patch_spacing_mm)
        if len(self.dataset) == 0:
            raise DataError(datalist, f"split {self.split!r} holds no disk patches")
        check_heads(self.config, network_outputs(self.network, (1, self.patch_size, self.patch_size)))
        audit = self.config.audit
        if audit.enabled and audit.surrogate_ckpt:
            self.surrogate = load_surrogate(self.network, audit.surrogate_ckpt)
        self.datalist_path = datalist
        # one run per output folder: a second one is refused naming the holder (a killed run's lock is taken over)
        try:
            self._lock = RunLock(self.output_dir, what="robustness evaluation").acquire()
        except RunLockedError as err:  # as a DataError, the error printer shows it as the last line
            raise DataError(self.output_dir, f"{err} (choose another --output_dir or wait for it)") from err
        return self

    def run(self) -> dict:
        if self.config is None:
            self.initialize()
        writer = None
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        run_info = {"checkpoint": str(self.ckpt_path.resolve()), "checkpoint_sha256": file_sha256(self.ckpt_path),
                    "datalist": str(Path(self.datalist_path).resolve()), "split": self.split,
                    "device": str(self.device), "network": type(self.network).__name__,
                    "network_params": network_params(self.network),
                    "model_description": {k: v for k, v in self.description.items() if k != "shape_pca_mean"},
                    "patch": {"size": self.patch_size, "spacing_mm": self.patch_spacing_mm}}
        if self.surrogate is not None:
            surrogate = Path(self.config.audit.surrogate_ckpt)
            run_info.update(surrogate_checkpoint=str(surrogate.resolve()), surrogate_sha256=file_sha256(surrogate))
        try:
            result = run_robustness_sweep(self.network, self.dataset, self.config, self.output_dir,
                                          writer=AttackTensorBoardLogger(writer, self.config.tensorboard_images)
                                          if writer is not None else None,
                                          progress=self.progress, run_info=run_info, surrogate=self.surrogate)
        finally:
            if writer is not None:
                writer.close()
        logger.info("robustness results in %s (report.md, per_sample.csv, aggregate.json, plots/, tensorboard/)",
                    self.output_dir)
        return result

    def finalize(self) -> None:
        """Release the output folder's lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
