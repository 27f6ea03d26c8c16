"""Time the phantom: one subject in memory, a whole dataset written to disk, and the gzip level of the NIfTIs.

    python benchmarks/phantom_speed.py                      # 100 subjects at 512 x 512, 2 workers
    python benchmarks/phantom_speed.py --subjects 20 --workers 1 --shape 256 256 --spacing 1.2

Prints one line per measurement; the figures go to docs/performance.md ("Phantom generation").
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time
from pathlib import Path

from diskrobust.data.phantom import PhantomConfig, generate_subject, write_phantom_dataset


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool's workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=2, default=(512, 512))
    ap.add_argument("--spacing", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--in-memory", type=int, default=5, help="subjects timed in memory (no files)")
    ap.add_argument("--keep", type=str, default=None, help="write the dataset here and keep it")
    args = ap.parse_args()
    cfg = PhantomConfig(shape=tuple(args.shape), spacing_mm=(args.spacing, args.spacing))
    print(f"cpus={os.cpu_count()} load average (1, 5, 15 min)={os.getloadavg()} shape={cfg.shape} spacing={cfg.spacing_mm}")

    generate_subject(0, cfg)  # warm-up (imports, FFT plans)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(args.in_memory):
        subj = generate_subject(1000 + s, cfg)
    per, per_cpu = (time.perf_counter() - t0) / args.in_memory, (time.process_time() - c0) / args.in_memory
    print(f"generate_subject (in memory, 1 process): {per:.3f} s/subject wall, {per_cpu:.3f} CPU s/subject, over {args.in_memory}")

    # the NIfTI gzip level: size and time for one image
    from diskrobust.data.dataset_io import sagittal_affine

    import nibabel as nib

    raw = nib.Nifti1Image(subj.image, sagittal_affine(cfg.spacing_mm)).to_bytes()
    for level in (1, 6, 9):
        t0 = time.perf_counter()
        for _ in range(3):
            size = len(gzip.compress(raw, compresslevel=level, mtime=0))
        print(f"gzip level {level}: {size / 1e3:.0f} kB, {(time.perf_counter() - t0) / 3 * 1000:.0f} ms per image")

    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="phantom_bench_"))
    try:
        t0 = time.perf_counter()
        cpu0 = _cpu_seconds()
        write_phantom_dataset(out, subjects=args.subjects, seed=args.seed, config=cfg, progress=True, workers=args.workers)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        print(f"  CPU time (this process + workers): {cpu:.1f} s = {cpu / args.subjects:.2f} CPU s/subject; "
              f"on {args.workers} idle cores that is about {cpu / max(args.workers, 1):.0f} s")
        print(
            f"write_phantom_dataset: {args.subjects} subjects, {args.workers} workers: {wall:.1f} s "
            f"({wall / args.subjects:.2f} s/subject), {_folder_mb(out):.0f} MB on disk"
        )
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
