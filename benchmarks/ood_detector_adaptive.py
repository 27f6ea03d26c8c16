"""Does a Mahalanobis OOD detector catch OOD attacks, and does it survive an adaptive one? Phantom, end to end.

    python benchmarks/ood_detector_adaptive.py [--subjects 24 --patch-size 64 --spacing-mm 1.0 --eps 20
        --steps 300 --weights 0 0.1 1 10 --ckpt net.pt]

Writes a phantom (256 x 256 px at 1.2 mm), trains DiskShapeNet(width 8) on shape-augmented training
patches (or loads --ckpt, a state_dict), fits MahalanobisDetector on training patches (real and
augmented), then `evaluate_detector` on the validation + test patches (IND) against uniform noise,
box noise and natural-image starts: clean, the OOD attack (w=0) and the adaptive OOD attack (w>0).
Prints Markdown tables. Paper budgets at 128 px on a GPU: --patch-size 128 --spacing-mm 0.5 --eps 40
--steps 4000 --train-iters 3000.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from diskrobust.attacks import box_noise, natural_images, targets_from_model, uniform_noise
from diskrobust.batch import prepare_disk_batch
from diskrobust.datasets import DiskPatchDataset, ShapeAugmentedDataset
from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset
from diskrobust.defenses import HeadAgreementDetector, MahalanobisDetector, evaluate_detector
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet
from diskrobust.transforms import ShapePCA


def train(net, bank, iterations, batch, lr, seed, device):
    pca = ShapePCA.fit(bank.points)
    data = ShapeAugmentedDataset(bank, pca, n_modes=min(8, pca.num_modes), samples_per_epoch=iterations * batch,
                                 seed=seed)
    loader = DataLoader(data, batch_size=batch, shuffle=False, num_workers=0)
    trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adamax(net.parameters(), lr=lr), loss_function=DiskShapeLoss(),
                                prepare_batch=prepare_disk_batch, decollate=False)
    ProgressBar(desc="train").attach(trainer)
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start, data


def images_of(dataset) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))]).float()


def table(result: dict, title: str) -> str:
    lines = [f"**{title}** (threshold {result['threshold']:.2f} at {result['tpr']:.0%} IND TPR; success = fools the "
             f"network within {result['fooled_px']:g} px AND passes the detector)", "",
             "| start | images | AUROC | detected | point dist. px | fooled | attack success |", "|---|---|---|---|---|---|---|"]
    for kind, rows in result["kinds"].items():
        for name, r in rows.items():
            mark = " (strongest adaptive)" if result["strongest_adaptive"].get(kind) == name else ""
            lines.append(f"| {kind} | {name}{mark} | {r['auroc']:.3f} | {r['detection_rate']:.0%} | "
                         f"{r['point_distance_px']:.2f} | {r['fooled_rate']:.0%} | {r['success_rate']:.0%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-iters", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ckpt", default=None, help="DiskShapeNet state_dict to load (skips training) or, with "
                                                     "--save-ckpt, where to save the trained one")
    parser.add_argument("--save-ckpt", action="store_true")
    parser.add_argument("--stages", type=int, nargs="+", default=[-1], help="encoder stages of the detector")
    parser.add_argument("--fit-augmented", type=int, default=256, help="augmented patches added to the fit set")
    parser.add_argument("--n-starts", type=int, default=8, help="start images per OOD kind (= targets)")
    parser.add_argument("--eps", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--attack-lr", type=float, default=0.01)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0])
    parser.add_argument("--fooled-px", type=float, default=1.0)
    parser.add_argument("--head-agreement", action="store_true", help="also evaluate HeadAgreementDetector")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="phantom folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_determinism(seed=args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or tmp)
        if not (data / "datalist.json").is_file():
            write_phantom_dataset(data, subjects=args.subjects, seed=args.seed,
                                  config=PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2)), progress=True)
        train_set = DiskPatchDataset(data / "datalist.json", "training", args.patch_size, args.spacing_mm)
        held_out = [DiskPatchDataset(data / "datalist.json", s, args.patch_size, args.spacing_mm)
                    for s in ("validation", "test")]

    torch.manual_seed(args.seed)
    net = DiskShapeNet(width=args.width, spatial_size=args.patch_size).to(device)
    net.set_mean_shape(train_set.bank.points.mean(0))
    pca = ShapePCA.fit(train_set.bank.points)
    augmented = ShapeAugmentedDataset(train_set.bank, pca, n_modes=min(8, pca.num_modes),
                                      samples_per_epoch=max(args.fit_augmented, 1), seed=args.seed + 1)
    if args.ckpt and Path(args.ckpt).is_file() and not args.save_ckpt:
        net.load_state_dict(torch.load(args.ckpt, map_location=device))
        train_s = 0.0
    else:
        train_s, _ = train(net, train_set.bank, args.train_iters, args.batch, args.lr, args.seed, device)
        if args.ckpt and args.save_ckpt:
            torch.save(net.state_dict(), args.ckpt)
    net.eval()

    fit_images = images_of(train_set)
    if args.fit_augmented > 0:
        fit_images = torch.cat([fit_images, images_of(augmented)])
    ind_images = torch.cat([images_of(d) for d in held_out]).to(device)
    with torch.no_grad():
        ind_error = torch.cat([
            (net(images_of(d).to(device))["pred"] - torch.stack([torch.as_tensor(d[i]["points"]) for i in range(len(d))])
             .to(device)).norm(dim=-1).mean(-1) for d in held_out]).mean().item()

    gen = torch.Generator().manual_seed(args.seed)
    n, size = args.n_starts, args.patch_size
    starts = {"uniform_noise": uniform_noise(n, size, generator=gen), "box_noise": box_noise(n, size, generator=gen),
              "natural": natural_images(n, size)[0]}
    targets = targets_from_model(net, ind_images[:n])
    attack_kwargs = {"eps": args.eps, "steps": args.steps, "lr": args.attack_lr, "progress": True}

    detectors = {"Mahalanobis": MahalanobisDetector(net, stages=args.stages).fit(fit_images.to(device))}
    if args.head_agreement:
        detectors["head agreement"] = HeadAgreementDetector(net)
    print(f"\nphantom: {args.subjects} subjects, {len(train_set)} training / {len(ind_images)} held-out (IND) patches, "
          f"{size} px at {args.spacing_mm} mm; DiskShapeNet(width={args.width}), trained {args.train_iters} it x batch "
          f"{args.batch} shape-augmented ({train_s:.0f} s), IND held-out point error {ind_error:.2f} px; device {device}")
    det = detectors["Mahalanobis"]
    print(f"Mahalanobis: stages {det.stages}, fitted on {det.num_samples} patches, Ledoit-Wolf shrinkage "
          f"{det.shrinkage:.3f}")
    print(f"OOD attack: L2 eps {args.eps:g}, {args.steps} Adamax steps, lr {args.attack_lr:g}, {n} starts per kind "
          f"(targets: the network's output on {n} held-out patches), detector weights {args.weights}, seed {args.seed}\n")
    for name, detector in detectors.items():
        start = time.perf_counter()
        result = evaluate_detector(net, detector, ind_images, starts, attack_kwargs, args.weights, targets,
                                   fooled_px=args.fooled_px, seed=args.seed)
        print(table(result, f"{name} detector") + f"\n\n({time.perf_counter() - start:.0f} s)\n")


if __name__ == "__main__":
    main()
