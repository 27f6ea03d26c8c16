"""What one study arm costs, from counted operations and measured per-image step times, and the
wall time of a whole profile: on N GPUs (the Ray engine, one arm per GPU) or, for a CPU profile, on
this machine's local engine (`jobs` bundle processes of 1 thread each).

    python benchmarks/study_cost.py --profile configs/study/paper.json --gpu-tflops 50
    python benchmarks/study_cost.py --profile configs/study/paper.json --device cuda   # measure the rate
    python benchmarks/study_cost.py --profile configs/study/findings.json --rounds 5  # a CPU design, jobs x 1 thread

Two kinds of image-step make up every arm: a training step (forward, DiskShapeLoss, backward to
the weights, Adamax) and a PGD/OOD iteration (forward, backward to the input only, weights
frozen). Their operations are counted with torch.utils.flop_counter (independent of the machine
and its load) and their time measured on this device (interleaved rounds; best and median wall,
and CPU seconds, which other engineers' jobs inflate far less; the OOD budget's step is the real
OODAttack's, bookkeeping included). An arm's work is counted from the
profile: standard training = epochs x samples training steps; fine-tuning adds its PGD iterations
per sample (adv_r/adv_s: steps, adv_rs: 2 x steps) and trains on the clean and attacked copies (2
or 3 training steps per sample; rand: 2); evaluation = IND (attacks x heads x eps x test patches x
steps x restarts; autoattack_linf: its APGD members' steps plus its queries as forward passes, 3
per attack-step) + OOD (starts x heads x eps x targets x steps), read from the attack bundle's
merged settings (stages._sweep_settings: the profile plus sweep_overrides, as the bundle reads them).

A findings design (`blocks`) adds the measurements after each arm's sweep: uniform noise (one
forward per budget and test patch, counted as an attack-step: an upper bound) and the OOD budget
search on the arms it lists, one image at a time: per start kind, random-start setting and target at
most 1 + `iterations` attacks of `steps` + 1 iterations (every target reached at rms_max: an upper
bound; a target solved at its start costs none, one not reached at rms_max costs one attack), timed
as a batch-1 attack-step. Training steps are timed at the profile's batch_size and attack-steps at
the evaluation's batch_size (per image).

Without a GPU the GPU time is FLOPs / `--gpu-tflops` (an assumed sustained rate, printed as
such); with `--device cuda` the measured rate replaces it. The schedule on N GPUs respects the one
dependency (fine-tuned arms start after their standard arm) and takes arms longest first; the
local engine's schedule (`local_makespan`) is its own queue: standard arms in grid order, then the
fine-tuned arms, each waiting for its standard arm. Not counted: bundle start-up, data loading,
patch extraction and shape-augmentation warps, TensorBoard, the report (compare with a measured
arm: docs/performance.md "Demo and study wall time").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


OOD_TRY_STEPS = 20  # the OOD attack timed for "attack1": per image-step = its time / (steps + 1)


def step_costs(width: int, size: int, batches: dict[str, int], rounds: int, device: str) -> dict:
    """FLOPs, wall and CPU seconds per image of each step kind at its batch size: `batches` maps
    "train" (a training step), "attack" (a PGD iteration) and "attack1" (an iteration of the OOD
    budget search's OODAttack, whose tries run one image at a time) to the batch timed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diskrobust.losses import DiskShapeLoss
    from diskrobust.networks import DiskShapeNet

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    net = DiskShapeNet(spatial_size=size, width=width).to(dev)
    opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
    loss_fn = DiskShapeLoss()

    def batch_of(n: int):
        x = torch.rand(n, 1, size, size, generator=g).to(dev)
        tgt = {"points": net.mean_shape.detach() + torch.randn(n, net.num_points, 2, generator=g).to(dev),
               "mask": (torch.rand(n, 1, size, size, generator=g) > 0.5).float().to(dev)}
        return x, tgt

    def train(x, tgt):
        net.train()
        for p in net.parameters():
            p.requires_grad_(True)
        loss = loss_fn(net(x), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def attack(x, tgt):  # one PGD iteration: eval mode, input gradient only
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        xa = x.clone().requires_grad_(True)
        out = net(xa)
        loss = ((out["pred"] - tgt["points"]) ** 2).sum()
        loss.backward()  # weights are frozen: only the input's gradient is computed
        return xa.grad.sign()

    def ood_budget_try(x, tgt):  # one try of the OOD budget search: the real OODAttack (both heads, Adamax, L2 ball)
        from diskrobust.attacks import OODAttack

        net.eval()
        OODAttack(net, eps=0.05 * size, steps=OOD_TRY_STEPS, random_start=False, seed=0, progress=False)(x, tgt)

    # "attack1" is timed as the search runs it (its per-step bookkeeping cost 1.3x a bare PGD step at batch 1)
    steps = {k: ((train if k == "train" else ood_budget_try if k == "attack1" else attack), batch_of(n),
                 n * (OOD_TRY_STEPS + 1 if k == "attack1" else 1)) for k, n in batches.items()}
    flops = {}
    for name, (fn, data, n) in steps.items():
        with FlopCounterMode(display=False) as counter:
            fn(*data)
        flops[name] = counter.get_total_flops() / n
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):  # interleaved, so load changes hit all alike
        for name, (fn, data, n) in steps.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t, c = time.perf_counter(), time.process_time()
            fn(*data)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[name].append((time.perf_counter() - t) / n)
            cpu[name].append((time.process_time() - c) / n)
    # the first round warms up; other jobs only ever slow a step down, so the best is the machine's speed
    return {"flops": flops, "batch": dict(batches), "best_s": {k: min(v[1:] or v) for k, v in times.items()},
            "median_s": {k: statistics.median(v[1:] or v) for k, v in times.items()},
            "cpu_s": {k: min(v[1:] or v) for k, v in cpu.items()}}


def training_work(train: dict, adversarial: dict) -> dict[str, dict[str, float]]:
    """Training image-steps of each method: {method: {"train": n, "attack": n}} (fine-tuning excludes
    the standard model it starts from)."""
    samples = train.get("epochs", 8) * train.get("samples_per_epoch", 6400)
    fine = adversarial.get("epochs", train.get("epochs", 8)) * train.get("samples_per_epoch", 6400)
    steps = adversarial.get("adv_steps", 20)
    return {
        "std": {"train": samples, "attack": 0.0},
        "rand": {"train": 2 * fine, "attack": 0.0},
        "adv_r": {"train": 2 * fine, "attack": steps * fine},
        "adv_s": {"train": 2 * fine, "attack": steps * fine},
        "adv_rs": {"train": 3 * fine, "attack": 2 * steps * fine},
    }


def sweep_work(sweep, test_patches: int) -> float:
    """Attack-steps of one evaluation sweep (a SweepConfig, as the attack bundle reads it)."""
    ind, ood = sweep.ind, sweep.ood
    n = test_patches if sweep.num_samples is None else min(test_patches, sweep.num_samples)
    total = 0.0
    if ind.enabled:
        for a in ind.attacks:
            # autoattack_linf: 3 APGD members at most (the points criterion), its Square queries forward only
            per = 3 * ind.steps + ind.queries / 3 if a.startswith("autoattack") else ind.steps
            total += len(ind.heads) * len(ind.eps[a]) * n * per * max(1, ind.restarts)
    if ood.enabled:
        total += len(ood.starts) * len(ood.heads) * len(ood.eps_rms) * min(n, ood.num_samples or n) * ood.steps
    return total


def arm_work(cfg, test_patches: int) -> dict[str, dict[str, float]]:
    """Image-steps per arm kind of a StudyConfig: {kind: {"train", "attack", "attack1"}}: each training
    method and "evaluate" (the sweep; "attack1" = batch-1 steps of the OOD budget search)."""
    from diskrobust.study.stages import _sweep_settings

    work = {m: {**w, "attack1": 0.0} for m, w in training_work(cfg.train, cfg.adversarial).items()}
    work["evaluate"] = {"train": 0.0, "attack": sweep_work(_sweep_settings(cfg), test_patches), "attack1": 0.0}
    return work


def measurement_work(cfg, arm, test_patches: int) -> dict[str, float]:
    """Attack-steps of the measurements after `arm`'s sweep (findings design): uniform noise and, on
    the arms it lists, the OOD budget search at its upper bound (see the module docstring)."""
    from diskrobust.robustness.ood_budget import OodBudgetConfig
    from diskrobust.study.stages import measures_ood_budget

    out = {"train": 0.0, "attack": 0.0, "attack1": 0.0}
    arms = cfg.baselines.get("uniform_noise_arms", "all")
    if arms == "all" or arm.design_name in arms:
        out["attack"] += sum(len(eps) for eps in (cfg.baselines.get("uniform_noise") or {}).values()) * test_patches
    if measures_ood_budget(cfg, arm):
        b = OodBudgetConfig.from_dict({k: v for k, v in cfg.ood_budget.items() if k != "arms"})
        out["attack1"] += len(b.starts) * len(b.random_start) * b.num_targets * (1 + b.iterations) * (b.steps + 1)
    return out


def test_disks(cfg, default: int) -> int:
    """Disks in the test split of the profile's phantom (5 per subject; the phantom's 0.7/0.15/0.15 split)."""
    from diskrobust.data.phantom.writer import _split_counts

    subjects = cfg.dataset.get("phantom_subjects")
    return 5 * _split_counts(int(subjects), (0.7, 0.15, 0.15))[2] if subjects else default


def makespan(arms: list[tuple[str, float, float]], gpus: int) -> float:
    """Greedy list schedule: (level, standard training, [what waits for it: its evaluation, the fine-tuned
    arms (training + evaluation)]) in hours -> wall hours on `gpus` GPUs."""
    free = [0.0] * gpus
    ready_fine = []
    for _, std_s, fines in sorted(arms, key=lambda a: -a[1]):
        i = min(range(gpus), key=free.__getitem__)
        free[i] += std_s
        ready_fine += [(free[i], s) for s in fines]
    for ready, s in sorted(ready_fine, key=lambda r: (-r[1], r[0])):
        i = min(range(gpus), key=free.__getitem__)
        free[i] = max(free[i], ready) + s
    return max(free)


def local_makespan(arms: list[tuple[str, str | None, float]], jobs: int) -> float:
    """The local engine's wall time (study/runner.run_local): (name, its standard arm or None, seconds)
    in queue order (standard arms first); `jobs` workers each take the next arm when free, and a
    fine-tuned arm holds its worker until its standard arm has finished."""
    free, finish = [0.0] * jobs, {}
    for name, base, seconds in arms:
        i = min(range(jobs), key=free.__getitem__)
        start = max(free[i], finish[base]) if base else free[i]
        finish[name] = free[i] = start + seconds
    return max(free, default=0.0)


def design_arms(cfg, cpu_s: dict[str, float], test_patches: int) -> list[tuple[str, str | None, float, float]]:
    """(arm, its standard arm or None, training CPU seconds, evaluation CPU seconds) of every arm of a
    findings design in the local engine's queue order, from counted steps x CPU seconds per step."""
    from diskrobust.study.stages import ordered_arms

    work = arm_work(cfg, test_patches)

    def seconds(w: dict[str, float]) -> float:
        return sum(w[k] * cpu_s[k] for k in ("train", "attack", "attack1"))

    order = ordered_arms(cfg)
    queue = [a for a in order if a.method == "std"] + [a for a in order if a.method != "std"]
    out = []
    for arm in queue:
        m = measurement_work(cfg, arm, test_patches)
        out.append((arm.name, None if arm.method == "std" else arm.base.name, seconds(work[arm.method]),
                    seconds(work["evaluate"]) + seconds(m)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="configs/study/paper.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None,
                    help="images per timed step (default: the profile's batch sizes for a CPU design, else 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu-tflops", type=float, default=25.0,
                    help="assumed sustained rate of one GPU on this network (TFLOP/s) when --device is cpu; "
                         "default 25: an A100-class GPU training a ResNet in TF32 without AMP")
    ap.add_argument("--test-patches", type=int, default=None,
                    help="disks in the test split (default: 5 per test subject of the profile's phantom)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 15])
    ap.add_argument("--jobs", type=int, default=None, help="CPU design: arms at once (default: the profile's)")
    ap.add_argument("--overhead", type=float, nargs=2, default=(0.0, 0.0), metavar=("TRAIN_S", "EVAL_S"),
                    help="CPU design: CPU seconds per arm beyond the counted steps (bundle and measurement start-up, "
                         "data, patch warps), for its training and its evaluation; measure them on one arm "
                         "(docs/performance.md) - default 0 0: steps only")
    args = ap.parse_args()

    import torch

    from diskrobust.study.grid import load_study_config
    from diskrobust.study.stages import _sweep_settings

    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    path = Path(args.profile) if Path(args.profile).is_file() else root / args.profile
    cfg = load_study_config(path)
    tr = cfg.train
    width, size = tr.get("width", 16), tr.get("patch_size", 128)
    patches = args.test_patches or test_disks(cfg, 150)
    sweep = _sweep_settings(cfg)
    design = bool(cfg.blocks)
    batches = ({"train": int(tr.get("batch_size", 32)), "attack": int(sweep.batch_size), "attack1": 1}
               if design and args.batch is None else dict.fromkeys(("train", "attack", "attack1") if design else
                                                                   ("train", "attack"), args.batch or 4))
    print(f"# study cost: {args.profile} (width {width}, {size} px, {patches} test disks), device {args.device}, "
          f"{args.threads} thread(s), load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    costs = step_costs(width, size, batches, args.rounds, args.device)
    f, best, med, cpu = costs["flops"], costs["best_s"], costs["median_s"], costs["cpu_s"]
    for k in f:
        print(f"- {k} image-step (batch {batches[k]}): {f[k] / 1e9:.2f} GFLOP; {best[k] * 1e3:.2f} ms best, "
              f"{med[k] * 1e3:.2f} ms median wall, {cpu[k] * 1e3:.2f} CPU ms per image "
              f"({f[k] / cpu[k] / 1e9:.1f} GFLOP per CPU second)")
    if design:
        jobs = args.jobs or cfg.jobs
        arms = [(n, b, t + args.overhead[0], e + args.overhead[1]) for n, b, t, e in design_arms(cfg, cpu, patches)]
        print(f"\n{len(arms)} arms; CPU seconds per arm (1 thread; counted steps x CPU s per step, plus "
              f"{args.overhead[0]:.0f} s training and {args.overhead[1]:.0f} s evaluation overhead per arm):\n")
        print("| arm | training | evaluation (sweep + measurements) |\n|---|---|---|")
        for name, _, t, e in arms:
            print(f"| {name} | {t:,.0f} | {e:,.0f} |")
        total = sum(t + e for _, _, t, e in arms)
        wall = local_makespan([(n, b, t + e) for n, b, t, e in arms], jobs)
        print(f"\nin all: {total:,.0f} CPU s = {total / 3600:.2f} CPU hours = {total / 3600 / jobs:.2f} h on {jobs} cores "
              f"if perfectly packed; the local engine's queue (jobs {jobs} x 1 thread, fine-tuned arms after their "
              f"standard arm): {wall / 3600:.2f} h wall on {jobs} otherwise idle cores")
        return
    rate = None if args.device == "cpu" else min(f[k] / best[k] for k in f) / 1e12
    gpu_rate = rate or args.gpu_tflops
    work = arm_work(cfg, patches)
    print(f"\nGPU rate: {gpu_rate:.1f} TFLOP/s ({'measured' if rate else 'ASSUMED, not measured'})\n")
    print("| stage | training image-steps | PGD/OOD image-steps | PFLOP | CPU hours (1 core of this machine) | GPU hours |")
    print("|---|---|---|---|---|---|")
    hours = {}
    for kind, w in work.items():
        fl = w["train"] * f["train"] + w["attack"] * f["attack"]
        cpu_h = (w["train"] * cpu["train"] + w["attack"] * cpu["attack"]) / 3600
        hours[kind] = fl / (gpu_rate * 1e12) / 3600
        print(f"| {kind} | {w['train']:,.0f} | {w['attack']:,.0f} | {fl / 1e15:,.1f} | {cpu_h:,.0f} | {hours[kind]:.2f} |")
    levels = cfg.shape_modes
    methods = [m for m in cfg.methods if m != "std"]
    ev_h = hours["evaluate"]
    arms = [(f"P{k}", hours["std"], [ev_h] + [hours[m] + ev_h for m in methods]) for k in levels]
    total = sum(a[1] + sum(a[2]) for a in arms)
    print(f"\n{len(levels) * (1 + len(methods))} arms, {total:.1f} GPU hours in all")
    print("\n| GPUs | wall time (h) |\n|---|---|")
    for n in args.gpus:
        print(f"| {n} | {makespan(arms, n):.1f} |")


if __name__ == "__main__":
    main()
