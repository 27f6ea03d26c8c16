"""Per-sample and aggregate evaluation metrics written to CSV and JSON at the end of an evaluation run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from diskrobust.metrics import mean_point_distance, polygon_dice, seg_dice

__all__ = ["DiskMetricsReport", "per_sample_metrics", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("mean_point_distance_px", "mean_point_distance_mm", "polygon_dice", "seg_dice")


def per_sample_metrics(pred: dict, targets: dict, spacing_mm: float) -> dict[str, torch.Tensor]:
    """Metrics per sample from the network output dict and the targets dict, each (B,) float64 on CPU.

    pred: {"pred": (B, N, 2) points px, "seg": (B, 1, H, W) logits} (either may be absent);
    targets: {"points": (B, N, 2), "mask": (B, 1, H, W)}; spacing_mm: patch pixel size (isotropic).
    Point metrics are NaN when there is no point head, seg Dice NaN when there is no seg head.
    """
    mask = targets["mask"]
    nan = torch.full((mask.shape[0],), float("nan"), dtype=torch.float64)
    out = {name: nan.clone() for name in METRIC_COLUMNS}
    if "pred" in pred:
        points = pred["pred"].detach().float()
        dist = mean_point_distance(points, targets["points"].to(points)).double().cpu()
        out["mean_point_distance_px"] = dist
        out["mean_point_distance_mm"] = dist * float(spacing_mm)
        out["polygon_dice"] = polygon_dice(points, mask.to(points.device)).double().cpu()
    if "seg" in pred:
        out["seg_dice"] = seg_dice(pred["seg"], mask.to(pred["seg"].device)).double().cpu()
    return out


def _summary(values: list[float]) -> dict[str, float | int | None]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


class DiskMetricsReport:
    """Collect per-sample metrics during an evaluation run and write them when it completes.

    Attach to a SupervisedEvaluator with decollate=False. Files in `output_dir`:
    `{prefix}_per_sample.csv` (subject, level and METRIC_COLUMNS per patch), `{prefix}_summary.csv`
    (metric, mean, std, median, min, max, n) and `{prefix}.json` ({"summary": {...}, "per_sample": [...],
    "info": info}). Subject/level come from the batch's "subject"/"level" lists when present.

    Args:
        output_dir: folder for the files (created).
        spacing_mm: patch pixel size in mm, to convert point distances.
        prefix: file name prefix.
        info: extra JSON-able facts stored with the summary (checkpoint, split, ...).
    """

    def __init__(self, output_dir: str, spacing_mm: float = 0.5, prefix: str = "metrics", info: dict | None = None):
        self.output_dir = Path(output_dir)
        self.spacing_mm = float(spacing_mm)
        self.prefix = prefix
        self.info = dict(info or {})
        self.rows: list[dict] = []
        self.summary: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        metrics = per_sample_metrics(output["pred"], output["label"], self.spacing_mm)
        batch = engine.state.batch if isinstance(engine.state.batch, dict) else {}
        bsz = len(next(iter(metrics.values())))
        subjects = list(batch.get("subject", [""] * bsz))
        levels = list(batch.get("level", [""] * bsz))
        for i in range(bsz):
            row = {"index": len(self.rows), "subject": str(subjects[i]), "level": str(levels[i])}
            row.update({k: float(v[i]) for k, v in metrics.items()})
            self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.summary = {k: _summary([r[k] for r in self.rows]) for k in METRIC_COLUMNS}
        columns = ["index", "subject", "level", *METRIC_COLUMNS]
        with open(self.output_dir / f"{self.prefix}_per_sample.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in columns})
        with open(self.output_dir / f"{self.prefix}_summary.csv", "w", newline="") as f:
            writer = csv.writer(f)
            stats = ["mean", "std", "median", "min", "max", "n"]
            writer.writerow(["metric", *stats])
            for name, s in self.summary.items():
                writer.writerow([name, *("" if s[k] is None else s[k] for k in stats)])
        doc = {"summary": self.summary, "per_sample": self.rows, "info": self.info}
        # NaN is not JSON: a missing head's metric is written as null
        text = json.dumps(doc, indent=1, allow_nan=True).replace("NaN", "null")
        (self.output_dir / f"{self.prefix}.json").write_text(text + "\n")
        engine.logger.info(
            "evaluation on %d patches: " + ", ".join(f"{k}={self.summary[k]['mean']}" for k in METRIC_COLUMNS),
            len(self.rows),
        )
