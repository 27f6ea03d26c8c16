"""Does adversarial training lower the PGD error? A small run on the phantom.

    python benchmarks/adversarial_training_effect.py [--subjects 12 --patch-size 64 --spacing-mm 1.0 ...]

Pretrains DiskShapeNet on clean phantom patches, then fine-tunes two copies for the same number of
iterations: `std` (clean) and `adv_r` (AdversarialTrainingHandler, PGD on the point SSE, eps 0.07,
step 0.01); `--arms std adv_r ima` adds the adaptive-margin arm (AdaptiveMarginTrainingHandler: PGD at a
per-disk budget up to eps 0.07, `--ima-eps-step`, `--ima-tolerance-px`). All are evaluated on the phantom's test split, clean and under PGD (L-inf, step eps/5,
point SSE). Prints a Markdown table of the mean point distance (px).

`--seeds 0 1 2` repeats the whole run per seed (network initialisation, batches, attacks; the phantom
stays that of the first seed, shared through `--data`) and then compares arms disk by disk with the
study's crossed bootstrap (seeds, then disks): `--compare fast_r:adv_r:1.15` asks whether fast_r's
error (clean and under PGD) is at most 1.15 x adv_r's (the difference fast_r - 1.15 adv_r with its 95 % interval: entirely
below 0 = met, entirely above = not met, else inconclusive). `--json-out` keeps every per-disk error.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from torch.utils.data import DataLoader, RandomSampler

from diskrobust.attacks import PGD, mean_point_distance
from diskrobust.batch import prepare_disk_batch
from diskrobust.datasets import DiskPatchDataset
from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset
from diskrobust.handlers.adaptive_margin import AdaptiveMarginTrainingHandler
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet
from diskrobust.robustness.baselines import mean_shape
from diskrobust.study.statistics import bootstrap_estimate, paired_difference


def train(net, dataset, iterations, batch, lr, seed, device, handler=None):
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=iterations * batch, generator=gen)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler)
    trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adamax(net.parameters(), lr=lr), loss_function=DiskShapeLoss(),
                                prepare_batch=prepare_disk_batch, decollate=False)
    if handler is not None:
        handler.attach(trainer)
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start


def evaluate(net, dataset, eps_list, steps, device, seed):
    loader = DataLoader(dataset, batch_size=len(dataset))
    batch = next(iter(loader))
    image, targets = prepare_disk_batch(batch, device)
    row = {}
    for eps in eps_list:
        if eps == 0:
            adv = image
        else:
            adv = PGD(net, eps=eps, steps=steps, step_size=eps / 5, objective="points", seed=seed)(image, targets).images
        with torch.no_grad():
            net.eval()
            row[eps] = mean_point_distance(net(adv)["pred"], targets["points"]).flatten().tolist()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pretrain-iters", type=int, default=300)
    parser.add_argument("--finetune-iters", type=int, default=150)
    parser.add_argument("--train-steps", type=int, default=5, help="PGD steps during adversarial training")
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="phantom folder (default: a temporary one)")
    parser.add_argument("--arms", nargs="+", default=["std", "adv_r"], choices=["std", "adv_r", "fast_r", "ima"])
    parser.add_argument("--ima-eps-step", type=float, default=0.005)
    parser.add_argument("--ima-tolerance-px", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run once per seed and compare arms with intervals (overrides --seed)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="A:B:RATIO",
                        help="is arm A's error <= RATIO x arm B's? (paired, at every eps, 0 = clean)")
    parser.add_argument("--json-out", default=None, help="write every per-disk error here")
    parser.add_argument("--from-json", default=None,
                        help="summarise (and plot) a --json-out file of an earlier run instead of training")
    parser.add_argument("--plot", default=None, help="clean vs PGD error per arm (PNG) with 95 %% intervals")
    args = parser.parse_args(argv)
    if args.from_json:
        results, args.arms = _load_results(args.from_json)
    comparisons = [_parse_comparison(c, args.arms, parser) for c in args.compare]
    if args.from_json:
        eps_list = sorted(next(iter(results.values()))[args.arms[0]]["errors"])
        summarise(results, args.arms, eps_list, comparisons)
        if args.plot:
            plot(results, [*args.arms, "mean_shape"], eps_list, args.plot)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seeds = args.seeds or [args.seed]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or tmp)
        for seed in seeds:
            results[seed] = run_seed(args, seed, data, device)
    eps_list = sorted(next(iter(results.values()))[args.arms[0]]["errors"])
    if len(seeds) > 1:
        summarise(results, args.arms, eps_list, comparisons)
    if args.plot:
        plot(results, [*args.arms, "mean_shape"], eps_list, args.plot)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


def _load_results(path: str) -> tuple[dict, list[str]]:
    """{seed: {arm: {"seconds", "errors": {eps: [...]}}}} and the trained arms of a --json-out file."""
    raw = json.loads(Path(path).read_text())
    results = {int(seed): {arm: {"seconds": v["seconds"], "errors": {float(e): errs for e, errs in v["errors"].items()}}
                           for arm, v in per_arm.items()} for seed, per_arm in raw["results"].items()}
    arms = [a for a in raw["args"]["arms"]]
    return results, arms


def plot(results: dict, arms, eps_list, path: str) -> None:
    """Clean error (x) against the PGD error at the largest eps (y), one point per arm with its 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = max(eps_list)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for arm in arms:
        clean = bootstrap_estimate(_matrix(results, arm, 0.0))
        robust = bootstrap_estimate(_matrix(results, arm, worst))
        ax.errorbar(clean.mean, robust.mean, xerr=[[clean.mean - clean.lo], [clean.hi - clean.mean]],
                    yerr=[[robust.mean - robust.lo], [robust.hi - robust.mean]], fmt="o", capsize=3, label=arm)
        ax.annotate(arm, (clean.mean, robust.mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("clean mean point distance (px)")
    ax.set_ylabel(f"PGD eps {worst:g} mean point distance (px)")
    ax.set_title(f"clean vs robust error, {len(results)} seeds, 95 % intervals")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def _parse_comparison(text: str, arms, parser) -> tuple[str, str, float]:
    try:
        a, b, ratio = text.split(":")
        ratio = float(ratio)
    except ValueError:
        parser.error(f"--compare {text!r}: expected A:B:RATIO, e.g. fast_r:adv_r:1.15")
    for arm in (a, b):
        if arm not in arms:
            parser.error(f"--compare {text!r}: arm {arm!r} is not among --arms {arms}")
    return a, b, ratio


def run_seed(args, seed: int, data: Path, device) -> dict:
    """Pretrain, fine-tune every arm, evaluate; {arm: {"seconds", "errors": {eps: per-disk errors}}}."""
    set_determinism(seed=seed)
    if not (data / "datalist.json").is_file():
        write_phantom_dataset(data, subjects=args.subjects, seed=seed,
                              config=PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2)), progress=True)
    train_set = DiskPatchDataset(data / "datalist.json", "training", args.patch_size, args.spacing_mm)
    test_set = DiskPatchDataset(data / "datalist.json", "test", args.patch_size, args.spacing_mm)

    torch.manual_seed(seed)
    net = DiskShapeNet(width=args.width, spatial_size=args.patch_size).to(device)
    t_pre = train(net, train_set, args.pretrain_iters, args.batch, args.lr, seed, device)
    arms = {}
    budgets = None
    for mode in args.arms:
        arm = copy.deepcopy(net)
        if mode == "ima":
            handler = AdaptiveMarginTrainingHandler(eps=0.07, steps=args.train_steps, step_size=0.01,
                                                    eps_step=args.ima_eps_step, tolerance_px=args.ima_tolerance_px,
                                                    seed=seed)
        else:
            handler = AdversarialTrainingHandler(mode, eps=0.07, steps=args.train_steps, step_size=0.01,
                                                 ramp_epochs=0, seed=seed)
        seconds = train(arm, train_set, args.finetune_iters, args.batch, args.lr, seed + 1, device, handler)
        arms[mode] = (arm, seconds)
        if mode == "ima":
            budgets = handler.summary()

    # The constant mean training shape, whatever the image: an arm no better than this has learnt nothing
    # from the image, and its "robustness" is that of a constant.
    train_points = torch.stack([train_set[i]["points"] for i in range(len(train_set))])
    test_points = torch.stack([test_set[i]["points"] for i in range(len(test_set))])
    constant = torch.as_tensor(mean_shape(train_points.numpy()), dtype=test_points.dtype)
    constant_errors = mean_point_distance(constant.expand_as(test_points), test_points).flatten().tolist()

    eps_list = (0.0, 0.03, 0.07)
    print(f"\nseed {seed}; phantom: {args.subjects} subjects, {len(train_set)} training / {len(test_set)} test "
          f"patches, {args.patch_size} px at {args.spacing_mm} mm; DiskShapeNet(width={args.width}); pretrain "
          f"{args.pretrain_iters} it ({t_pre:.0f} s), fine-tune {args.finetune_iters} it x batch {args.batch}; "
          f"training PGD-{args.train_steps}; evaluation PGD-{args.eval_steps}, step eps/5, device {device}\n")
    print("| arm | fine-tune s | " + " | ".join(f"MRSE px, eps {e:g}" for e in eps_list) + " |")
    print("|---|---|" + "---|" * len(eps_list))
    out = {}
    for mode, (arm, seconds) in arms.items():
        row = evaluate(arm, test_set, eps_list, args.eval_steps, device, seed)
        out[mode] = {"seconds": seconds, "errors": row}
        print(f"| {mode} | {seconds:.0f} | " + " | ".join(f"{sum(row[e]) / len(row[e]):.2f}" for e in eps_list) + " |",
              flush=True)
    out["mean_shape"] = {"seconds": 0.0, "errors": {eps: constant_errors for eps in eps_list}}
    print(f"| mean_shape (constant baseline) | - | " + " | ".join(
        f"{sum(constant_errors) / len(constant_errors):.2f}" for _ in eps_list) + " |")
    if budgets is not None:
        print(f"\nima per-disk budgets at the end: {', '.join(f'{k} {v:.4g}' for k, v in budgets.items())}")
    return out


def _matrix(results: dict, arm: str, eps: float) -> list[list[float]]:
    return [results[seed][arm]["errors"][eps] for seed in sorted(results)]


def summarise(results: dict, arms, eps_list, comparisons) -> None:
    """Per-arm means with 95 % intervals (crossed bootstrap: seeds, then disks), then the comparisons."""
    print(f"\nAll {len(results)} seeds (95 % interval, crossed bootstrap over seeds and test disks):\n")
    print("| arm | " + " | ".join(f"eps {e:g}" for e in eps_list) + " |")
    print("|---|" + "---|" * len(eps_list))
    for arm in [*arms, "mean_shape"]:
        cells = []
        for eps in eps_list:
            est = bootstrap_estimate(_matrix(results, arm, eps))
            cells.append(f"{est.mean:.2f} [{est.lo:.2f}, {est.hi:.2f}]")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    for a, b, ratio in comparisons:
        print(f"\n{a} <= {ratio:g} x {b}? (difference {a} - {ratio:g} {b}, paired per seed and disk)\n")
        for eps in eps_list:
            scaled = [[ratio * v for v in row] for row in _matrix(results, b, eps)]
            est = paired_difference(_matrix(results, a, eps), scaled)
            verdict = "met" if est.hi < 0 else ("not met" if est.lo > 0 else "inconclusive")
            print(f"- eps {eps:g}: {est.mean:+.2f} [{est.lo:+.2f}, {est.hi:+.2f}] px: {verdict}")


if __name__ == "__main__":
    main()
