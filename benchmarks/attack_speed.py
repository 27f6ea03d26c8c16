"""PGD speed: ours vs the same PGD written ART/advertorch style vs torchattacks' PGD loop, and the
cost of one adversarial-training iteration relative to a clean one.

    python benchmarks/attack_speed.py [--size 128 --width 8 --batch 8 --steps 10 --train-steps 20 --threads 1]

Prints Markdown tables (image-steps/s = batch * steps / seconds). torchattacks (3.5.1, the `bench`
extra) is optional: without it that row is skipped.
"""

from __future__ import annotations

import argparse
import time

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from diskrobust.attacks import PGD
from diskrobust.batch import prepare_disk_batch
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss, point_sse_per_sample
from diskrobust.networks import DiskShapeNet


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


def timed_rounds(fns: dict, rounds: int) -> dict:
    """Best seconds per call of each fn; the fns alternate within each round so that a change in the
    machine's load hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up (allocator, kernels)
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def synthetic_batch(n, size, device, generator):
    image = torch.rand((n, 1, size, size), generator=generator).to(device)
    points = (size / 2 + size / 4 * torch.randn((n, 176, 2), generator=generator)).to(device)
    mask = (torch.rand((n, 1, size, size), generator=generator) > 0.5).float().to(device)
    return image, {"points": points, "mask": mask}


def training_iteration_cost(net, size, batch, k, device, iterations):
    """Seconds per SupervisedTrainer iteration, clean and with adv_r PGD-k."""
    gen = torch.Generator().manual_seed(1)
    image, targets = synthetic_batch(batch * iterations, size, "cpu", gen)
    items = [{"image": image[i], "points": targets["points"][i], "mask": targets["mask"][i]} for i in range(len(image))]
    loader = torch.utils.data.DataLoader(items, batch_size=batch)
    times = {}
    for mode in ("std", "adv_r"):
        trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=net,
                                    optimizer=torch.optim.Adamax(net.parameters(), lr=1e-4),
                                    loss_function=DiskShapeLoss(), prepare_batch=prepare_disk_batch, decollate=False)
        AdversarialTrainingHandler(mode, eps=0.07, steps=k, step_size=0.01, ramp_epochs=0).attach(trainer)
        stamps = []
        trainer.add_event_handler(Events.ITERATION_STARTED(once=2), lambda: stamps.append(time.perf_counter()))
        trainer.add_event_handler(Events.COMPLETED, lambda: stamps.append(time.perf_counter()))
        trainer.run()  # the first iteration is the warm-up
        times[mode] = (stamps[1] - stamps[0]) / (iterations - 1)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=20, help="K of the training PGD (paper: 20)")
    parser.add_argument("--train-iterations", type=int, default=3)
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
    rows = list(timed_rounds(fns, args.rounds).items())

    print(f"\nPGD, {args.steps} steps, batch {args.batch}, {args.size}x{args.size}, DiskShapeNet(width={args.width}), "
          f"device {device}, threads {torch.get_num_threads()}\n")
    print("| implementation | s per attack (best of rounds) | image-steps/s | time / ours |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        rate = args.batch * args.steps / seconds
        print(f"| {name} | {seconds:.2f} | {rate:.1f} | {seconds / rows[0][1]:.2f} |")

    costs = training_iteration_cost(net, args.size, args.batch, args.train_steps, device, args.train_iterations)
    k = args.train_steps
    print(f"\nSupervisedTrainer iteration, batch {args.batch}, adv_r with PGD-{k}\n")
    print("| clean s/it | adv_r s/it | multiple of clean | PGD-K passes in principle |")
    print("|---|---|---|---|")
    print(f"| {costs['std']:.2f} | {costs['adv_r']:.2f} | {costs['adv_r'] / costs['std']:.1f} | "
          f"K+1 = {k + 1} (K forward+backward, 1 forward) + the doubled batch's step |")


if __name__ == "__main__":
    main()
