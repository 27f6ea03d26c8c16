"""Time the lumbar_disk_attack bundle's cpu-quick profile on the phantom with a briefly trained network.

    python benchmarks/attack_bundle_cpu_quick.py --workdir /tmp/attack_bench [--width 8] [--train_steps 60]

Generates the phantom (24 subjects, seed 0, as lumbar_disk_shape does), trains DiskShapeNet for a few
steps on the training patches (a stand-in for the training bundle's model.pt: the attacks need a network
that has learnt something, not a good one), then runs
`python -m monai.bundle run --config_file bundles/lumbar_disk_attack/configs/evaluate.json` with the
default cpu-quick profile and prints the wall time, the CPU time and the per-unit times from sweep.log.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_bench.py
from _bench import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_tiny(datalist: Path, ckpt: Path, width: int, steps: int, seed: int = 0) -> None:
    from diskrobust.datasets import DiskPatchDataset
    from diskrobust.losses import DiskShapeLoss
    from diskrobust.networks import DiskShapeNet

    ds = DiskPatchDataset(datalist, "training")
    data = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("image", "points", "mask")}
    torch.manual_seed(seed)
    net = DiskShapeNet(width=width)
    net.set_mean_shape(data["points"].mean(0))
    opt = torch.optim.Adamax(net.parameters(), lr=1e-2)
    loss_fn = DiskShapeLoss()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(ds), (16,), generator=gen)
        loss = loss_fn(net(data["image"][idx]), {"points": data["points"][idx], "mask": data["mask"][idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"train step {step}: {loss_fn.last_terms}", flush=True)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), ckpt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/attack_bench"))
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--train_steps", type=int, default=60)
    parser.add_argument("--profile", default="cpu-quick")
    args = parser.parse_args()

    from diskrobust.data.phantom import ensure_phantom

    datalist = ensure_phantom(args.workdir / "phantom", subjects=24, seed=0, progress=False)
    ckpt = args.workdir / f"model_w{args.width}.pt"
    if not ckpt.is_file():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the stand-in training only; the timed bundle run uses torch's default
        train_tiny(datalist, ckpt, args.width, args.train_steps)
        torch.set_num_threads(threads)
    out = args.workdir / f"eval_{args.profile}"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(REPO / "bundles/lumbar_disk_attack/configs/evaluate.json"), "--ckpt_path", str(ckpt),
           "--dataset_dir", str(args.workdir / "phantom"), "--output_dir", str(out), "--width", str(args.width),
           # a plain state_dict: its geometry is stated (the bundle's default patches, 128 px at 0.5 mm)
           "--patch_size", "128", "--patch_spacing_mm", "0.5", "--device", "cpu"]
    if args.profile != "cpu-quick":  # a profile is an override file after evaluate.json
        cmd[cmd.index("--config_file") + 1] = repr([cmd[cmd.index("--config_file") + 1],
                                                    str(REPO / f"bundles/lumbar_disk_attack/configs/profiles/{args.profile}.json")])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    units = [json.loads(line) for line in (out / "sweep.log").read_text().splitlines()]
    per_sweep: dict[str, float] = {}
    for e in units:
        if e["event"] == "computed":
            key = e["unit"].split("/")[0]
            per_sweep[key] = per_sweep.get(key, 0.0) + e["seconds"]
    print(json.dumps({"profile": args.profile, "wall_s": round(wall, 1),
                      "cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1),
                      "unit_seconds_by_sweep": {k: round(v, 1) for k, v in per_sweep.items()},
                      "output_dir": str(out)}, indent=2))
    print(machine())


if __name__ == "__main__":
    main()
