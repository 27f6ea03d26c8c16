"""Render docs/images/monai_label_disks.png: what the MONAI Label app returns for a held-out phantom
subject (the automatic search with the shipped model), the label over the image, with level names.

    python scripts/monai_label_figure.py [--seed 1000] [--out docs/images/monai_label_disks.png]

It runs the same code as the server's ``disk_shape`` task (diskrobust.serving.DiskShapeService).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diskrobust.data.dataset_io import write_image_nifti  # noqa: E402
from diskrobust.data.phantom import PhantomConfig, generate_subject  # noqa: E402
from diskrobust.serving import DiskShapeService, disks_label_image, load_bundle_network  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1000, help="phantom subject seed (held out: >= 1000)")
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "monai_label_disks.png"))
    args = parser.parse_args()
    subject = generate_subject(args.seed, PhantomConfig())
    network = load_bundle_network(REPO / "bundles" / "lumbar_disk_shape")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.nii.gz"
        write_image_nifti(path, subject.image, subject.affine)
        start = time.time()
        sl, disks = DiskShapeService(network).infer(path)
        seconds = time.time() - start
    label = disks_label_image(disks, sl.image.shape)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(sl.image, cmap="gray")
    ax.imshow(np.ma.masked_equal(label, 0), cmap="tab10", alpha=0.45, vmin=200, vmax=210, interpolation="nearest")
    for d in disks:
        ax.plot(*np.vstack([d.points_px, d.points_px[:1]]).T, color="yellow", lw=0.8)
        ax.text(d.centre_px[0] - 60, d.centre_px[1], d.level + (" ?" if d.flags else ""), color="yellow", fontsize=9,
                ha="right", va="center")
    ax.set_title(f"disk_shape, automatic search: {len(disks)} disks (phantom seed {args.seed})", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"{args.out}: {[d.level for d in disks]} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
