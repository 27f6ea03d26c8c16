"""PGD speed: ours vs the same PGD written ART/advertorch style vs torchattacks' PGD loop, and the
cost of one adversarial-training iteration relative to a clean one.

    python benchmarks/attack_speed.py [--size 128 --width 8 --batch 8 --steps 10 --train-steps 20 --threads 1]

Prints the machine and Markdown tables (image-steps/s = batch * steps / seconds), each rate with its
FLOP count and the fraction of a large 3x3 convolution's rate measured inside the same rounds. The
implementations alternate within every round; the ratio to ours is reported per round (min /
median / max), not only for the best times. torchattacks (3.5.1, the `bench` extra) is optional:
without it that row is skipped.

The adversarial-training cost times whole SupervisedTrainer iterations from the start of the 2nd
iteration (before the adversarial handler attacks that batch) to the end of the run: the timestamp
handler is attached before the adversarial handler, so every timed iteration includes its attack.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from diskrobust.attacks import PGD
from diskrobust.batch import prepare_disk_batch
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss, point_sse_per_sample
from diskrobust.networks import DiskShapeNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import count_flops, interleaved, machine, peak_conv  # noqa: E402


def parameter_gradient_pgd(model, images, targets, eps, step_size, steps, generator):
    """The same L-inf PGD as ART/advertorch write it: loss.backward() with parameter gradients enabled."""
    model.eval()
    delta = torch.empty_like(images).uniform_(-eps, eps, generator=generator)
    adv = (images + delta).clamp(0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        loss = point_sse_per_sample(model(adv)["pred"], targets["points"]).sum()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            adv = adv + step_size * adv.grad.sign()
            adv = (images + (adv - images).clamp(-eps, eps)).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return adv.detach()


def torchattacks_pgd(model, eps, step_size, steps):
    """torchattacks' PGD loop, unchanged, maximising the point SSE (see tests/test_attacks.py for why)."""
    import torchattacks

    class PointPGD(torchattacks.PGD):
        def forward(self, images, targets):
            object.__setattr__(self, "_targets", targets)
            return super().forward(images, torch.zeros(images.shape[0], dtype=torch.long, device=images.device))

        def get_logits(self, inputs, labels=None, *args, **kwargs):
            sse = point_sse_per_sample(self.model(inputs)["pred"], self._targets["points"])
            return torch.stack([torch.zeros_like(sse), sse], dim=1)

    return PointPGD(model, eps=eps, alpha=step_size, steps=steps, random_start=True)


def synthetic_batch(n, size, device, generator):
    image = torch.rand((n, 1, size, size), generator=generator).to(device)
    points = (size / 2 + size / 4 * torch.randn((n, 176, 2), generator=generator)).to(device)
    mask = (torch.rand((n, 1, size, size), generator=generator) > 0.5).float().to(device)
    return image, {"points": points, "mask": mask}


def training_iteration_cost(net, size, batch, k, device, iterations, rounds):
    """Seconds per SupervisedTrainer iteration, clean ("std") and with adv_r PGD-k, per round (the two
    alternate), and the FLOPs of one iteration of each."""
    gen = torch.Generator().manual_seed(1)
    image, targets = synthetic_batch(batch * iterations, size, "cpu", gen)
    items = [{"image": image[i], "points": targets["points"][i], "mask": targets["mask"][i]} for i in range(len(image))]
    loader = torch.utils.data.DataLoader(items, batch_size=batch)

    def trainer_for(mode, length):
        trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=net,
                                    optimizer=torch.optim.Adamax(net.parameters(), lr=1e-4), epoch_length=length,
                                    loss_function=DiskShapeLoss(), prepare_batch=prepare_disk_batch, decollate=False)
        stamps = []
        # attached BEFORE the adversarial handler: at the 2nd ITERATION_STARTED the stamp is taken first,
        # then that batch is attacked, so the timed span holds iterations-1 whole adversarial iterations
        trainer.add_event_handler(Events.ITERATION_STARTED(once=2), lambda: stamps.append(time.perf_counter()))
        trainer.add_event_handler(Events.COMPLETED, lambda: stamps.append(time.perf_counter()))
        AdversarialTrainingHandler(mode, eps=0.07, steps=k, step_size=0.01, ramp_epochs=0).attach(trainer)
        return trainer, stamps

    times = {"std": [], "adv_r": []}
    for _ in range(rounds):
        for mode in times:
            trainer, stamps = trainer_for(mode, iterations)
            trainer.run()  # the first iteration is the warm-up
            times[mode].append((stamps[1] - stamps[0]) / (iterations - 1))
    flops = {mode: count_flops(lambda m=mode: trainer_for(m, 1)[0].run()) for mode in times}
    return times, flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=20, help="K of the training PGD (paper: 20)")
    parser.add_argument("--train-iterations", type=int, default=3, help="iterations per trainer run (the first untimed)")
    parser.add_argument("--train-rounds", type=int, default=3, help="trainer runs per arm (clean and adv_r alternate)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (best of)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    net = DiskShapeNet(width=args.width, spatial_size=args.size).to(device)
    image, targets = synthetic_batch(args.batch, args.size, device, torch.Generator().manual_seed(args.seed))
    eps, step = 0.07, 0.014
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn):
        def wrapped():
            fn()
            sync()
        return wrapped

    fns = {}
    ours = PGD(net, eps=eps, step_size=step, steps=args.steps, seed=args.seed)
    fns["diskrobust PGD (input-only autograd.grad, params frozen, keeps best)"] = run(lambda: ours(image, targets))
    gen = torch.Generator(device=device).manual_seed(args.seed)
    fns["same PGD, ART/advertorch style (loss.backward(), param grads)"] = run(
        lambda: parameter_gradient_pgd(net, image, targets, eps, step, args.steps, gen))
    try:
        theirs = torchattacks_pgd(net, eps, step, args.steps)
        fns["torchattacks 3.5.1 PGD loop (subclass, point SSE)"] = run(lambda: theirs(image, targets))
    except ImportError:
        print("torchattacks not installed: skipping its row (pip install torchattacks==3.5.1)")
    flops = {name: count_flops(fn) for name, fn in fns.items()}
    peak_fn, peak_flops = peak_conv(device)
    times = interleaved({**fns, "_peak": peak_fn}, args.rounds, device)
    peak = peak_flops / statistics.median(times.pop("_peak"))
    ours = next(iter(times))

    print(machine(device))
    print(f"\nPGD, {args.steps} steps, batch {args.batch}, {args.size}x{args.size}, DiskShapeNet(width={args.width}), "
          f"device {device}, threads {torch.get_num_threads()}, {args.rounds} interleaved rounds after 1 warm-up; "
          f"fp32 conv peak in these rounds (median) {peak / 1e9:.1f} GFLOP/s\n")
    print("| implementation | GFLOP/attack | s per attack best / median | image-steps/s (median) | GFLOP/s (median) "
          "| % of conv peak | time / ours per round: min / median / max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, secs in times.items():
        med = statistics.median(secs)
        ratios = sorted(a / b for a, b in zip(secs, times[ours]))
        print(f"| {name} | {flops[name] / 1e9:.2f} | {min(secs):.2f} / {med:.2f} | {args.batch * args.steps / med:.1f} "
              f"| {flops[name] / med / 1e9:.1f} | {100 * flops[name] / med / peak:.0f} % "
              f"| {ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f} |")

    k = args.train_steps
    costs, it_flops = training_iteration_cost(net, args.size, args.batch, k, device, args.train_iterations,
                                              args.train_rounds)
    ratios = sorted(a / c for a, c in zip(costs["adv_r"], costs["std"]))
    print(f"\nSupervisedTrainer iteration, batch {args.batch}, adv_r with PGD-{k}, {args.train_iterations - 1} timed "
          f"iterations per run, {args.train_rounds} rounds (clean and adv_r alternate)\n")
    print("| arm | GFLOP/iteration | s/it best / median | GFLOP/s (median) | % of the conv peak above |")
    print("|---|---:|---:|---:|---:|")
    for mode, secs in costs.items():
        med = statistics.median(secs)
        rate = it_flops[mode] / med
        print(f"| {mode} | {it_flops[mode] / 1e9:.2f} | {min(secs):.2f} / {med:.2f} | {rate / 1e9:.1f} "
              f"| {100 * rate / peak:.0f} % |")
    print(f"\nadv_r / clean per round: min {ratios[0]:.1f}, median {statistics.median(ratios):.1f}, max {ratios[-1]:.1f} "
          f"(FLOP ratio {it_flops['adv_r'] / it_flops['std']:.1f}); PGD-{k} needs K+1 = {k + 1} passes (K forward + "
          f"input backward, 1 forward) plus the step on the doubled batch")
    print("\n" + machine(device) + " (at the end)")


if __name__ == "__main__":
    main()
