"""Datasets on disk: images/, labels/, contours/ (+ contours_exact/ with annotation noise), datalist.json,
phantom.json; ``ensure_phantom``; PNG rendering with the contours."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from diskrobust import POINTS_PER_SIDE
from diskrobust.data.errors import DataError

from .config import PhantomConfig, PhantomSubject
from .generate import generate_subject

__all__ = ["subject_seeds", "write_phantom_dataset", "ensure_phantom", "render_subject_png"]


def subject_seeds(seed: int, subjects: int) -> list[int]:
    """Per-subject seeds spawned from the dataset seed; subject i's seed does not depend on ``subjects``."""
    children = np.random.SeedSequence(int(seed)).spawn(int(subjects))
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def _split_counts(n: int, split: tuple[float, float, float]) -> list[int]:
    counts = [int(round(n * f)) for f in split[:2]]
    counts.append(n - sum(counts))
    # every split asked for gets at least one subject when there are enough
    for i, f in enumerate(split):
        if f > 0 and counts[i] <= 0 and n >= sum(1 for g in split if g > 0):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _write_one(job: tuple[int, int, str, dict, str]) -> dict:
    """Generate and write one subject (runs in a worker process)."""
    from diskrobust.data.dataset_io import write_contours_json, write_image_nifti

    index, seed, out_dir, cfg_dict, split = job
    cfg = PhantomConfig.from_dict(cfg_dict)
    subj = generate_subject(seed, cfg)
    name = f"sub-{index:04d}"
    out = Path(out_dir)
    write_image_nifti(out / "images" / f"{name}.nii.gz", subj.image, subj.affine)
    write_image_nifti(out / "labels" / f"{name}.nii.gz", subj.label, subj.affine)
    noisy = subj.disks_noisy is not None and split in cfg.annotation_noise_splits
    write_contours_json(out / "contours" / f"{name}.json", name, cfg.shape, subj.spacing_mm, subj.disks_noisy if noisy else subj.disks)
    if subj.disks_noisy is not None:  # the evaluation truth, always exact
        write_contours_json(out / "contours_exact" / f"{name}.json", name, cfg.shape, subj.spacing_mm, subj.disks)
    return {"subject": name, "seed": seed, "split": split, "contours_noisy": bool(noisy), "params": subj.params}


IN_PROGRESS_MARKER = ".phantom-in-progress.json"


def write_phantom_dataset(
    out_dir: str | Path,
    subjects: int,
    seed: int,
    config: PhantomConfig | None = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: bool = True,
    workers: int = 2,
) -> Path:
    """Generate ``subjects`` subjects into ``out_dir`` and return the path of its datalist.json.

    Writes images/, labels/, contours/, datalist.json (MONAI datalist, paths relative to it, split by
    subject in order: the first ``split[0]`` go to training) and phantom.json (config, seed, per-subject
    seeds, split and parameters, each disk's ``findings``). Same arguments -> same bytes, whatever
    ``workers`` is. With ``config.annotation_noise_mm`` > 0 the contours/ of the subjects in
    ``config.annotation_noise_splits`` carry annotation noise; contours_exact/ holds every subject's exact
    contours and each datalist entry names its file as ``contours_exact``.

    With ``workers > 1`` the subjects are made in a "spawn" process pool: a script that calls this at
    import time needs the usual ``if __name__ == "__main__":`` guard (or ``workers=1``).
    """
    from diskrobust.data.dataset_io import _atomic_write_json, write_datalist

    cfg = config if config is not None else PhantomConfig()
    subjects, seed, workers = int(subjects), int(seed), int(workers)
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    split = tuple(float(f) for f in split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (training, validation, test) summing to 1, got {split}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Marks the folder as this project's phantom while it is being written: a run killed half-way
    # leaves it, and ensure_phantom then regenerates the folder instead of refusing it as foreign data.
    _atomic_write_json(out / IN_PROGRESS_MARKER, {"generator": "diskrobust.data.phantom", "subjects": subjects, "seed": seed})
    seeds = subject_seeds(seed, subjects)
    counts = _split_counts(subjects, split)
    split_of = ["training"] * counts[0] + ["validation"] * counts[1] + ["test"] * counts[2]
    jobs = [(i, s, str(out), cfg.to_dict(), split_of[i]) for i, s in enumerate(seeds)]
    from tqdm.auto import tqdm

    bar = tqdm(total=subjects, desc="phantom", unit="subject", disable=not progress)
    results: list[dict] = []
    try:
        if workers > 1 and subjects > 1:
            import multiprocessing as mp

            # spawn, not fork: the caller may hold torch threads; the workers import only numpy/scipy/skimage
            with mp.get_context("spawn").Pool(min(workers, subjects)) as pool:
                for r in pool.imap(_write_one, jobs, chunksize=1):
                    results.append(r)
                    bar.update(1)
        else:
            for job in jobs:
                results.append(_write_one(job))
                bar.update(1)
    finally:
        bar.close()
    entries = [
        {"subject": r["subject"], "image": f"images/{r['subject']}.nii.gz", "label": f"labels/{r['subject']}.nii.gz", "contours": f"contours/{r['subject']}.json"}
        for r in results
    ]
    if cfg.annotation_noise_mm > 0:
        for e in entries:
            e["contours_exact"] = f"contours_exact/{e['subject']}.json"
    splits = {"training": entries[: counts[0]], "validation": entries[counts[0] : counts[0] + counts[1]], "test": entries[counts[0] + counts[1] :]}
    _atomic_write_json(
        out / "phantom.json",
        {
            "generator": "diskrobust.data.phantom",
            "version": 2,
            "seed": seed,
            "subjects": subjects,
            "split": list(split),
            "config": cfg.to_dict(),
            "subject_params": results,
        },
    )
    # written last: its presence marks a complete dataset (see ensure_phantom)
    datalist = write_datalist(out / "datalist.json", splits)
    (out / IN_PROGRESS_MARKER).unlink(missing_ok=True)
    return datalist


def _warn_if_other_phantom(d: Path, subjects: int, seed: int, config: PhantomConfig | None) -> None:
    """An existing phantom made with other settings is used as is; say so, since results depend on it."""
    meta_path = d / "phantom.json"
    if not meta_path.is_file():
        return  # a converted real dataset: nothing to compare
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    wanted = {"subjects": int(subjects), "seed": int(seed), "config": (config or PhantomConfig()).to_dict()}
    differ = [k for k, v in wanted.items() if meta.get(k) != v]
    if differ:
        import logging

        logging.getLogger(__name__).warning(
            "%s already holds a phantom dataset whose %s differ from the requested ones; using it as is "
            "(delete the folder to regenerate)", d, ", ".join(differ)
        )


def ensure_phantom(dataset_dir: str | Path, subjects: int = 100, seed: int = 0, config: PhantomConfig | None = None, progress: bool = True) -> Path:
    """The folder's datalist.json; generate the phantom there first if the folder is missing or empty.

    A folder with other content but no datalist.json is not touched: DataError names it.
    """
    d = Path(dataset_dir)
    datalist = d / "datalist.json"
    if datalist.is_file():
        _warn_if_other_phantom(d, subjects, seed, config)
        return datalist
    if d.exists():
        if not d.is_dir():
            raise DataError(d, "dataset path exists and is not a folder")
        if (d / IN_PROGRESS_MARKER).is_file():
            logging.getLogger(__name__).warning("%s: a phantom generation was interrupted here; generating it again", d)
            import shutil

            for name in ("images", "labels", "contours", "contours_exact"):  # only what the generator writes
                if (d / name).is_dir():
                    shutil.rmtree(d / name)
        elif any(d.iterdir()):
            raise DataError(d, "folder is not empty and holds no datalist.json; refusing to generate the phantom into it (empty it or pick another folder)")
    return write_phantom_dataset(d, subjects=subjects, seed=seed, config=config, progress=progress)


def render_subject_png(subject: PhantomSubject, path: str | Path, title: str | None = None) -> Path:
    """Save the image with the ground-truth contours (corners marked) as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, W = subject.image.shape
    sr, sc = subject.spacing_mm
    fig, ax = plt.subplots(figsize=(6, 6 * (H * sr) / (W * sc)), dpi=110)
    # aspect = row/col spacing: anatomy keeps its shape on non-square pixels
    ax.imshow(subject.image, cmap="gray", vmin=0, vmax=float(np.percentile(subject.image, 99.7)), interpolation="nearest", aspect=sr / sc)
    colours = plt.cm.autumn(np.linspace(0, 1, len(subject.disks)))
    findings = {d.get("level"): d.get("findings", []) for d in subject.params.get("disks", [])}
    for disk, colour in zip(subject.disks, colours):
        p = disk["points_px"]
        ax.plot(np.append(p[:, 0], p[0, 0]), np.append(p[:, 1], p[0, 1]), "-", color=colour, lw=0.8)
        corners = p[::POINTS_PER_SIDE]
        ax.plot(corners[1:, 0], corners[1:, 1], "o", ms=2.5, color="cyan")
        ax.plot(corners[0, 0], corners[0, 1], "o", ms=3.5, color="lime")  # point 0: anterior-superior
        ax.text(p[:, 0].min() - 4, p[:, 1].mean(), disk["level"], color="yellow", fontsize=6, ha="right", va="center")
        found = [f for f in findings.get(disk["level"], []) if not f.startswith("pfirrmann")]
        if found:  # the disk's findings, right of the canal
            ax.text(p[:, 0].max() + 30 / sc, p[:, 1].mean(), ", ".join(found).replace("_", " "), color="yellow", fontsize=5, ha="left", va="center")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
