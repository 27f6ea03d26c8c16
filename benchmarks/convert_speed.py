"""Time `python -m diskrobust convert spider` on a SPIDER-sized synthetic dataset built from the phantom.

Each series is a 512 x 512 x 15 sagittal volume (0.6 mm in-plane, 3.5 mm slices, the size of a
SPIDER T2 series), stored as .mha with ITK's LPS direction cosines and a permuted axis order.

    python benchmarks/convert_speed.py --series 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import itk
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_bench.py
from _bench import machine  # noqa: E402


def build(root: Path, n_series: int, n_slices: int = 15) -> None:
    from diskrobust.data.phantom import PhantomConfig, generate_subject

    cfg = PhantomConfig(shape=(512, 512), spacing_mm=(0.6, 0.6))
    for i in range(n_series):
        ph = generate_subject(i, cfg)
        mid = n_slices // 2
        img = np.stack([ph.image * (1 - 0.02 * abs(k - mid)) for k in range(n_slices)]).astype(np.float32)
        lab = np.stack([ph.label if abs(k - mid) <= 3 else np.zeros_like(ph.label) for k in range(n_slices)])
        for sub, vol in (("images", img), ("masks", lab)):
            # file index axes (col, row, slice) like many SPIDER files; numpy order is reversed for ITK
            im = itk.image_from_array(np.ascontiguousarray(vol))
            im.SetSpacing([0.6, 0.6, 3.5])
            im.SetDirection(itk.matrix_from_array(np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])))
            (root / sub).mkdir(parents=True, exist_ok=True)
            itk.imwrite(im, str(root / sub / f"{i}_t2.mha"), compression=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=4)
    args = ap.parse_args()
    from diskrobust.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "spider", Path(tmp) / "out"
        t0 = time.perf_counter()
        build(root, args.series)
        t1 = time.perf_counter()
        import monai.transforms  # noqa: F401  (imports are not what is timed)

        import diskrobust.data.convert  # noqa: F401

        t1, c1 = time.perf_counter(), time.process_time()
        rc = cli(["convert", "spider", "--root", str(root), "--out", str(out), "--no-progress"])
        t2, c2 = time.perf_counter(), time.process_time()
    print(f"built {args.series} series in {t1 - t0:.1f} s; converted in {t2 - t1:.1f} s wall, {c2 - c1:.1f} s CPU "
          f"({(t2 - t1) / args.series:.2f} s/series wall, {(c2 - c1) / args.series:.2f} s/series CPU), exit code {rc}")
    print(machine())


if __name__ == "__main__":
    main()
