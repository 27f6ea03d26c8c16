"""`python -m diskrobust certify`: certified per-point bounds of a model file on a dataset split.

    python -m diskrobust certify --model MODEL.pt --dataset_dir DIR --sigma 0.05 --radii 0.01 0.02 0.05 \
        --n 200 --out runs/cert

writes `<out>/certificate.json` (settings, per disk and per radius the certified worst-case point
displacement, the summary over disks, the smoothed and the base model's clean point error) and
`<out>/certified_displacement.png`. `--check_steps K` also runs the PGD soundness check
(`smoothing_attack`) at every radius. A bad argument, a missing model file or dataset folder ends the
output with one `error: ...` line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CERTIFICATE_FORMAT = "diskrobust-certificate/1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model file (models/model.pt of a lumbar_disk_shape run)")
    parser.add_argument("--dataset_dir", required=True, help="dataset folder holding datalist.json (e.g. a phantom)")
    parser.add_argument("--split", default="test", help="datalist split to certify (default test)")
    parser.add_argument("--sigma", type=float, required=True, help="smoothing noise std on [0, 1] intensities")
    parser.add_argument("--radii", type=float, nargs="+", required=True, help="L2 radii to certify")
    parser.add_argument("--n", type=int, default=200, help="noise samples per disk (default 200)")
    parser.add_argument("--alpha", type=float, default=0.001, help="the bounds hold with probability 1 - alpha")
    parser.add_argument("--confidence", choices=("joint", "per_coordinate"), default="joint",
                        help="joint (default): all 352 coordinates of a disk at once (Bonferroni), as the "
                             "worst-case displacement needs; per_coordinate: each coordinate on its own")
    parser.add_argument("--num_disks", type=int, default=None, help="first N disks of the split (default all)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--chunk_size", type=int, default=50, help="noisy copies per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--check_steps", type=int, default=0,
                        help="PGD steps of the soundness check at each radius (default 0: no check)")
    parser.add_argument("--check_samples", type=int, default=16, help="noisy copies per PGD step of the check")
    parser.add_argument("--out", required=True, help="output folder")


def _load(model: str, dataset_dir: str, split: str, device: str, num_disks: int | None):
    from diskrobust.checkpoints import build_model_from_checkpoint
    from diskrobust.data.errors import DataError
    from diskrobust.datasets import DiskPatchDataset
    from diskrobust.robustness.testset import load_test_set

    model_path, folder = Path(model), Path(dataset_dir)
    if not model_path.is_file():
        raise DataError(model_path, "model file not found: give --model the path of a model.pt "
                                    "(e.g. bundles/lumbar_disk_shape/models/model.pt)")
    if not folder.is_dir():
        raise DataError(folder, "dataset folder not found: give --dataset_dir a folder holding datalist.json "
                                "(make the phantom with `python -m diskrobust phantom --out DIR`)")
    datalist = folder / "datalist.json"
    if not datalist.is_file():
        raise DataError(folder, "holds no datalist.json: not a dataset folder (see docs/data.md)")
    network, desc = build_model_from_checkpoint(model_path, device)
    size, spacing = int(desc["patch"]["size"]), float(desc["patch"]["spacing_mm"])
    dataset = DiskPatchDataset(str(datalist), split, patch_size=size, patch_spacing_mm=spacing)
    test = load_test_set(dataset, num_disks, spacing_mm=spacing)
    return network, desc, test


def certify_model_file(model: str, dataset_dir: str, out: str, sigma: float, radii, n: int = 200,
                       alpha: float = 0.001, joint: bool = True, split: str = "test", num_disks: int | None = None,
                       seed: int = 0, chunk_size: int = 50, device: str = "cpu", check_steps: int = 0,
                       check_samples: int = 16) -> dict:
    """Certify every disk of `split` (the first `num_disks`); write certificate.json and the plot; return the dict."""
    import torch

    from diskrobust.checkpoints import weights_digest
    from diskrobust.robustness.network import file_sha256

    from .smoothing import _check_alpha, _check_int, _check_radii, _check_sigma, certify, order_statistics
    from .smoothing_attack import attack_smoothed, check_certificate

    if num_disks is not None and num_disks < 1:
        raise ValueError(f"num_disks must be >= 1, got {num_disks}")
    # bad settings and a too-small n are refused before anything is loaded (certify checks them again)
    sigma, radii, n, alpha = _check_sigma(sigma), _check_radii(radii), _check_int(n, "n", 1), _check_alpha(alpha)
    order_statistics(n, max(radii), sigma, alpha / (2 * (176 * 2 if joint else 1)))
    network, desc, test = _load(model, dataset_dir, split, device, num_disks)
    start = time.perf_counter()
    images = test.images.to(device)
    with torch.no_grad():
        base = network.eval()(images)["pred"].cpu()
    cert = certify(network, images, sigma, radii, n=n, alpha=alpha, joint=joint, seed=seed, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    base_err = (base - test.points).norm(dim=-1).mean(dim=-1)
    smooth_err = (cert.median - test.points).norm(dim=-1).mean(dim=-1)
    trained_sigma = (desc.get("training") or {}).get("settings", {}).get("noise_sigma")
    notes = []
    if not trained_sigma:
        notes.append("the base model was not trained with Gaussian noise (no noise_sigma in its training "
                     "settings): the smoothed model is poor and the certified radii small")
    elif float(trained_sigma) != float(sigma):
        notes.append(f"the base model was trained with noise sigma {trained_sigma}, certified with {sigma}")
    per_disk = []
    for b in range(len(test)):
        per_disk.append({"subject": test.subjects[b], "level": test.levels[b],
                         "base_error_px": float(base_err[b]), "smoothed_error_px": float(smooth_err[b]),
                         "displacement_px": {f"{r:g}": float(cert.displacement[i, b]) for i, r in enumerate(cert.radii)}})
    summary = cert.summary()
    for row in summary:
        row["displacement_median_mm"] = row["displacement_median_px"] * test.spacing_mm
        row["displacement_max_mm"] = row["displacement_max_px"] * test.spacing_mm
    checks = []
    if check_steps > 0:
        for i, r in enumerate(cert.radii):
            if r == 0:
                continue
            adv = attack_smoothed(network, images, sigma, r, cert.median.to(device), steps=check_steps,
                                  samples=check_samples, seed=seed)
            res = check_certificate(network, cert, adv, i, chunk_size=chunk_size)
            checks.append({"radius": r, "pgd_steps": check_steps, "surrogate_samples": check_samples,
                           "recomputed_with_n": 4 * n, "escape_rate": res["escape_rate"],
                           "disks_with_any_escape": res["any_escaped_rate"],
                           "attacked_displacement_max_px": float(res["displacement_px"].max()),
                           "certified_displacement_max_px": float(res["certified_px"].max())})
    result = {
        "format": CERTIFICATE_FORMAT,
        "model": str(Path(model).resolve()), "model_sha256": file_sha256(model),
        "weights_digest": weights_digest(network),
        "dataset": str(Path(dataset_dir).resolve()), "split": split, "disks": len(test),
        "patch": desc["patch"], "trained_noise_sigma": trained_sigma,
        "settings": {"sigma": sigma, "radii": list(cert.radii), "n": n, "alpha": alpha,
                     "confidence": "joint" if joint else "per_coordinate", "seed": seed, "device": str(device)},
        "confidence_statement": cert.confidence_statement(),
        "notes": notes,
        "certify_seconds": seconds,
        "base_error_px_mean": float(base_err.mean()), "smoothed_error_px_mean": float(smooth_err.mean()),
        "summary": summary, "per_disk": per_disk, "pgd_check": checks,
    }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "certificate.json").write_text(json.dumps(result, indent=2))
    plot_displacement(result, folder / "certified_displacement.png")
    return result


def plot_displacement(result: dict, path: Path) -> None:
    """Certified worst-case displacement vs r: every disk thin, median and max over disks bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = result["settings"]["radii"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for disk in result["per_disk"]:
        ax.plot(radii, [disk["displacement_px"][f"{r:g}"] for r in radii], color="0.75", lw=0.8)
    ax.plot(radii, [s["displacement_median_px"] for s in result["summary"]], "o-", color="C0", label="median over disks")
    ax.plot(radii, [s["displacement_max_px"] for s in result["summary"]], "s--", color="C3", label="max over disks")
    ax.set_xlabel("L2 radius r (input on [0, 1])")
    ax.set_ylabel("certified worst-case point displacement (px)")
    s = result["settings"]
    ax.set_title(f"median smoothing, sigma {s['sigma']:g}, n {s['n']}, 1 - alpha = {1 - s['alpha']:g} "
                 f"({s['confidence'].replace('_', ' ')})", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        result = certify_model_file(args.model, args.dataset_dir, args.out, args.sigma, args.radii, n=args.n,
                                    alpha=args.alpha, joint=args.confidence == "joint", split=args.split,
                                    num_disks=args.num_disks, seed=args.seed, chunk_size=args.chunk_size,
                                    device=args.device, check_steps=args.check_steps,
                                    check_samples=args.check_samples)
    except ValueError as err:  # DataError is a ValueError: bad files and bad arguments alike
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['disks']} disks, sigma {args.sigma:g}, n {args.n}, confidence {1 - args.alpha:g} "
          f"({result['settings']['confidence']}); clean error: base {result['base_error_px_mean']:.2f} px, "
          f"smoothed {result['smoothed_error_px_mean']:.2f} px")
    for row in result["summary"]:
        print(f"r {row['radius']:g}: certified worst-case displacement median {row['displacement_median_px']:.2f} px, "
              f"max {row['displacement_max_px']:.2f} px")
    for c in result["pgd_check"]:
        print(f"PGD check r {c['radius']:g}: {100 * c['escape_rate']:.2f} % of coordinates escaped")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {Path(args.out) / 'certificate.json'}, {Path(args.out) / 'certified_displacement.png'}")
    return 0
