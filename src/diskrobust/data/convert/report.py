"""The conversion report: report.json (machine-readable) and report.md (for people) in the output folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diskrobust.data.dataset_io import atomic_write_bytes

REPORT_FORMAT = "diskrobust-convert-report/1"

__all__ = ["REPORT_FORMAT", "summarise", "write_report", "render_markdown"]


def summarise(series: list[dict], unpaired: list[dict]) -> dict[str, Any]:
    """Counts over the series entries: by status, disks converted/skipped, and skip reasons."""
    by_status: dict[str, int] = {}
    reasons: dict[str, int] = {}
    n_conv = n_skip = 0
    for s in series:
        by_status[s["status"]] = by_status.get(s["status"], 0) + 1
        n_conv += len(s.get("disks_converted", []))
        for d in s.get("disks_skipped", []):
            n_skip += 1
            key = d["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "series_total": len(series),
        "series_converted": by_status.get("converted", 0),
        "series_skipped": by_status.get("skipped", 0),
        "series_failed": by_status.get("failed", 0),
        "files_unpaired": len(unpaired),
        "disks_converted": n_conv,
        "disks_skipped": n_skip,
        "disk_skip_reasons": dict(sorted(reasons.items())),
    }


def render_markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"# Conversion report: {report['dataset']}",
        "",
        f"- source: `{report['root']}`",
        f"- output: `{report['out']}`",
        f"- seed: {report['seed']}; split fractions (training, validation, test): {report['split_fractions']}",
        f"- series: {s['series_total']} found, {s['series_converted']} converted, {s['series_skipped']} skipped "
        f"(no usable disk), {s['series_failed']} failed (unreadable or invalid)",
        f"- disks: {s['disks_converted']} converted, {s['disks_skipped']} skipped",
        f"- files without a partner: {s['files_unpaired']}",
        f"- patients per split: {report.get('patients_per_split', {})}",
        "",
    ]
    if s["disk_skip_reasons"]:
        lines += ["## Why disks were skipped", "", "| reason | disks |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["disk_skip_reasons"].items()] + [""]
    lines += [
        "## Series",
        "",
        "| subject | patient | split | status | slice | converted | skipped (reason) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report["series"]:
        conv = ", ".join(d["level"] for d in e.get("disks_converted", [])) or "-"
        skip = "; ".join(f"{d['level']} ({d['reason']})" for d in e.get("disks_skipped", [])) or "-"
        if e["status"] == "failed":
            skip = f"**failed**: {e.get('error', '')}"
        elif e["status"] == "skipped" and e.get("reason") and skip == "-":
            skip = e["reason"]
        sl = f"{e['slice_index']}/{e['num_slices']} (axis {e['sagittal_axis']})" if "slice_index" in e else "-"
        cells = [e["subject"], e["patient"], e.get("split", "-"), e["status"], sl, conv, skip]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    notes = [(e["subject"], n) for e in report["series"] for n in e.get("orientation_notes", [])]
    if notes:
        lines += ["## Slice and orientation notes", ""] + [f"- {subj}: {n}" for subj, n in notes] + [""]
    if report["unpaired"]:
        lines += ["## Files without a partner (not converted)", ""]
        lines += [f"- `{u['path']}`: {u['problem']}" for u in report["unpaired"]] + [""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    pj = atomic_write_bytes(out_dir / "report.json", (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    pm = atomic_write_bytes(out_dir / "report.md", render_markdown(report).encode("utf-8"))
    return pj, pm
