"""The robustness sweep engine: clean metrics, an IND attack sweep over budgets, an OOD attack sweep.

`run_robustness_sweep(model, dataset, config, output_dir)` is what the attack bundle
(`diskrobust.robustness.workflow`) and notebooks call. The work is planned as units
(`diskrobust.robustness.units`: one per sweep, attack, head and budget, cached with a fingerprint),
computed here one at a time, then summarised by `diskrobust.robustness.results`.

Sweep kinds (`SWEEP_KINDS`: the name of a unit's sweep -> the Runner method that computes it):
    clean  the network on the test patches; the eps = 0 point of every IND curve.
    ind    an IND attack (`IND_ATTACK_BUILDERS`: "linf" and "l2" PGD, `diskrobust.attacks.PGD`; "autoattack_linf"
           and "autoattack_l2" the `RegressionAutoAttack` ensemble, whose rows name the winning `member`),
           untargeted, per attacked head ("points": point SSE, "seg": 1 - soft Dice, "both": their sum),
           per budget; metrics vs the true contour.
    ood    `diskrobust.attacks.OODAttack` from start images ("uniform_noise", "box_noise", "natural":
           scikit-image sample photos) towards the network's own outputs on the test patches, per
           per-pixel L2 budget; metrics vs that target (how closely the fooled network reproduces an
           in-distribution disk). Budget 0 is the start image unattacked: the start-image distance.
    audit  the gradient-masking audit's rows (`units.plan_audit_units`, when `audit#enabled`): noise, an
           independent Square attack, the audited attack with more steps / restarts, at L-inf eps 1, the
           trivially reachable images, transfer from a surrogate. Written to `audit.csv` (column
           `audit_role`), never into per_sample.csv or the aggregate; `sweep_audit` turns them into the
           audit at the top of report.md and in aggregate.json.
A new attack kind is one entry in `IND_ATTACK_BUILDERS` (and its name in `config.IND_ATTACKS`), or a
new sweep kind in `SWEEP_KINDS` with its planning in `units.plan_units`.

Randomness: every unit's seed is derived from `config.seed` and the unit's name, so a unit gives the
same numbers whether it runs first, last or in a resumed run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diskrobust.attacks.layout import AUTO, AttackLayout, layout_model, tune_attack_layout
from diskrobust.data.dataset_io import atomic_write_json, atomic_write_text
from diskrobust.robustness import results
from diskrobust.robustness.config import IND_ATTACKS, SweepConfig
from diskrobust.robustness.network import check_heads, load_surrogate, model_fingerprint, network_outputs
from diskrobust.robustness.results import METRICS
from diskrobust.robustness.sweep_audit import audit_json, audit_markdown
from diskrobust.robustness.tensorboard import AttackTensorBoardLogger
from diskrobust.robustness.testset import TestSet, load_test_set
from diskrobust.robustness.units import (EventLog, Unit, audited_attack, derive_seed, load_unit, plan_audit_units,
                                         plan_units, unit_fingerprint, unit_summary)

__all__ = ["IND_ATTACK_BUILDERS", "SWEEP_KINDS", "Runner", "run_robustness_sweep", "report_header"]


def _pgd(model: nn.Module, unit: Unit, seed: int, progress: bool, chunk_size: int | None = None):
    from diskrobust.attacks import PGD

    p = unit.params
    return PGD(model, eps=unit.eps, steps=p["steps"], step_size=p["step_size"], norm=unit.norm,
               random_start=p["random_start"], update=p["update"], objective=unit.head,
               point_loss=p["point_loss"], restarts=p["restarts"], seed=seed, progress=progress,
               chunk_size=chunk_size, precision=p.get("precision", "fp32"))


def _autoattack(model: nn.Module, unit: Unit, seed: int, progress: bool, chunk_size: int | None = None):
    from diskrobust.attacks.autoattack import RegressionAutoAttack

    p = unit.params
    return RegressionAutoAttack(model, eps=unit.eps, norm=unit.norm, criterion=unit.head, steps=p["steps"],
                                restarts=p["restarts"], queries=p["queries"], seed=seed, progress=progress,
                                chunk_size=chunk_size)


def _square(model: nn.Module, unit: Unit, seed: int, progress: bool, chunk_size: int | None = None):
    """The audit's query-based attack: Square on the point distance from the clean image (its own stripes
    start), never from a gradient attack's result, so it is a number independent of the gradient."""
    from diskrobust.attacks import SquareAttack
    from diskrobust.attacks.autoattack import point_distance_criterion

    return SquareAttack(model, eps=unit.eps, queries=unit.params["queries"], norm=unit.norm,
                        objective=point_distance_criterion, seed=seed, progress=progress)


# IND attack name -> builder(model, unit, seed, progress, chunk_size) -> an attack called as attack(images, targets),
# returning images, losses and deltas (diskrobust.attacks.AttackResult; an EnsembleResult also names the
# member that found each sample's worst case). Add new attack kinds here.
IND_ATTACK_BUILDERS: dict[str, Callable] = {"linf": _pgd, "l2": _pgd, "autoattack_linf": _autoattack,
                                            "autoattack_l2": _autoattack}


def _metrics_module():
    from diskrobust import metrics

    return metrics


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, ref_points: torch.Tensor | None,
              poly_mask: torch.Tensor | None, seg_mask: torch.Tensor | None, spacing_mm: float) -> dict[str, np.ndarray]:
    """Metrics (B,) of the network on `images` against a reference: point error px/mm, polygon and seg Dice.

    ref_points (B, N, 2); poly_mask, seg_mask (B, 1, H, W). NaN where the network lacks the head.
    Also returns the predicted points (B, N, 2) or None under "_pred".
    """
    m = _metrics_module()
    out = model(images)
    b = images.shape[0]
    nan = np.full(b, np.nan)
    res = {"point_error_px": nan, "point_error_mm": nan, "polygon_dice": nan, "seg_dice": nan, "_pred": None}
    if "pred" in out and ref_points is not None:
        pred = out["pred"]
        res["point_error_px"] = m.mean_point_distance(pred, ref_points).cpu().numpy().astype(float)
        res["point_error_mm"] = m.mean_point_distance(pred, ref_points, spacing_mm=(spacing_mm, spacing_mm)).cpu().numpy().astype(float)
        res["_pred"] = pred.detach()
    if "pred" in out and poly_mask is not None:
        res["polygon_dice"] = m.polygon_dice(out["pred"], poly_mask).cpu().numpy().astype(float)
        res["_pred"] = out["pred"].detach()
    if "seg" in out and seg_mask is not None:
        res["seg_dice"] = m.seg_dice(out["seg"], seg_mask).cpu().numpy().astype(float)
    return res


def _rows(unit: Unit, ids: Sequence[int], test: TestSet, metrics: Mapping, losses, deltas: torch.Tensor | None,
          reference: str, member: Sequence[str] | None = None) -> list[dict]:
    b = len(ids)
    if deltas is not None:
        flat = deltas.detach().flatten(1).float().cpu()
        linf, l2 = flat.abs().amax(1).numpy(), flat.norm(dim=1).numpy()
    else:
        linf = l2 = np.zeros(b)
    losses = np.full(b, np.nan) if losses is None else losses.detach().cpu().numpy().astype(float)
    rows = []
    for j, i in enumerate(ids):
        rows.append({
            "sample_id": int(i), "subject": test.subjects[i], "level": test.levels[i], "sweep": unit.sweep,
            "attack": unit.attack, "norm": unit.norm, "head": unit.head, "eps": float(unit.eps),
            "eps_rms": float("nan") if unit.eps_rms is None else float(unit.eps_rms), "steps": unit.steps,
            "reference": reference,
            **{k: float(metrics[k][j]) for k in METRICS},
            "attack_loss": float(losses[j]), "delta_linf": float(linf[j]), "delta_l2": float(l2[j]),
            "member": "" if member is None else member[j],
        })
    return rows


def _batches(n: int, batch_size: int):
    for b, start in enumerate(range(0, n, batch_size)):
        yield b, list(range(start, min(n, start + batch_size)))


def _ood_starts(kind: str, n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(n, 1, H, W) start images of one kind, the same for every budget and head of that kind."""
    from diskrobust.attacks import box_noise, natural_images, uniform_noise

    gen = torch.Generator().manual_seed(derive_seed(seed, f"ood_start/{kind}"))
    if kind == "uniform_noise":
        return uniform_noise(n, size, generator=gen)
    if kind == "box_noise":
        return box_noise(n, size, generator=gen)
    images, _ = natural_images(n, size)
    return images


class Runner:
    """Computes one unit at a time; holds the test set and the OOD targets."""

    # Attacks with at least this many steps get their own (transient) progress bar: a paper-profile
    # unit runs for minutes, the unit bar alone would look stuck.
    INNER_BAR_STEPS = 100

    def __init__(self, model: nn.Module, test: TestSet, cfg: SweepConfig, tb: AttackTensorBoardLogger | None,
                 progress: bool = False, surrogate: nn.Module | None = None, chunk_size: int | None = None):
        self.model, self.test, self.cfg, self.tb = model, test, cfg, tb
        self.surrogate = surrogate
        self.chunk_size = chunk_size
        self.progress = progress
        self.device = next(model.parameters()).device
        self._ood_targets: dict[str, torch.Tensor] | None = None
        self._clean_pred: torch.Tensor | None = None

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def clean_predictions(self) -> torch.Tensor | None:
        """(N, 176, 2) the clean predictions (for the IND contour images), None without a point head."""
        if self._clean_pred is None:
            preds = []
            with torch.no_grad():
                for _, ids in _batches(len(self.test), self.cfg.batch_size):
                    out = self.model(self._dev(self.test.images[ids]))
                    if "pred" not in out:
                        return None
                    preds.append(out["pred"].cpu())
            self._clean_pred = torch.cat(preds)
        return self._clean_pred

    def ood_targets(self) -> dict[str, torch.Tensor]:
        """The network's outputs on the first ood.num_samples test patches: points, seg mask, polygon mask."""
        if self._ood_targets is None:
            from diskrobust.attacks import targets_from_model
            from diskrobust.data.contours import polygon_fill_torch

            n = self.n_ood
            parts: dict[str, list] = {}
            for _, ids in _batches(n, self.cfg.batch_size):
                t = targets_from_model(self.model, self._dev(self.test.images[ids]))
                for k, v in t.items():
                    parts.setdefault(k, []).append(v.cpu())
            targets = {k: torch.cat(v) for k, v in parts.items()}
            if "points" in targets:
                h, w = self.test.images.shape[-2:]
                targets["polygon"] = polygon_fill_torch(targets["points"], (h, w)).float().reshape(n, 1, h, w)
            self._ood_targets = targets
        return self._ood_targets

    @property
    def n_ood(self) -> int:
        return len(self.test) if self.cfg.ood.num_samples is None else min(self.cfg.ood.num_samples, len(self.test))

    def run(self, unit: Unit) -> list[dict]:
        return SWEEP_KINDS[unit.sweep](self, unit)

    def _clean(self, unit: Unit) -> list[dict]:
        rows = []
        for _, ids in _batches(len(self.test), self.cfg.batch_size):
            x = self._dev(self.test.images[ids])
            mask = self._dev(self.test.mask[ids])
            met = _evaluate(self.model, x, self._dev(self.test.points[ids]), mask, mask, self.test.spacing_mm)
            rows += _rows(unit, ids, self.test, met, None, None, "truth")
        return rows

    def _ind(self, unit: Unit) -> list[dict]:
        return self._attack_rows(unit, self.test, IND_ATTACK_BUILDERS[unit.attack], self.model, log_examples=True)

    def _attack_rows(self, unit: Unit, test: TestSet, build: Callable, craft_on: nn.Module,
                     log_examples: bool = False) -> list[dict]:
        """Rows of the attack `build(model, unit, seed, progress)` crafted on `craft_on` and scored on the network
        (craft_on is the network itself, or the audit's surrogate: then the crafting loss is not reported)."""
        seed = derive_seed(self.cfg.seed, unit.key)
        rows = []
        for b, ids in _batches(len(test), self.cfg.batch_size):
            x = self._dev(test.images[ids])
            points, mask = self._dev(test.points[ids]), self._dev(test.mask[ids])
            attack = build(craft_on, unit, seed + b, self.progress and unit.steps >= self.INNER_BAR_STEPS,
                           chunk_size=self.chunk_size)
            res = attack(x, {"points": points, "mask": mask})
            met = _evaluate(self.model, res.images, points, mask, mask, test.spacing_mm)
            losses = res.losses if craft_on is self.model else None
            rows += _rows(unit, ids, test, met, losses, res.deltas, "truth", getattr(res, "member", None))
            if log_examples and b == 0 and self.tb is not None and self.tb.num_images:
                clean_pred = self.clean_predictions()
                self.tb.log_ind_examples(unit.prefix, unit.eps, ids, x.cpu(), res.images.cpu(), points.cpu(),
                                         None if clean_pred is None else clean_pred[ids],
                                         None if met["_pred"] is None else met["_pred"].cpu())
        return rows

    def _audit(self, unit: Unit) -> list[dict]:
        """One unit of the gradient-masking audit (`units.plan_audit_units`): rows tagged with the unit's role
        (`audit_role`) and the attack or image that produced them (`attack`)."""
        role, p = unit.attack, unit.params
        test = load_test_set(self.test, p["num_samples"])
        seed = derive_seed(self.cfg.seed, unit.key)
        if role == "noise":
            rows = self._worst_noise(test, unit.eps, unit.norm, seed, p["draws"])
        elif role == "query":
            rows = [{**r, "attack": "square"} for r in self._attack_rows(unit, test, _square, self.model)]
        elif role == "trivial":
            rows = self._trivial_rows(unit, test, seed)
        elif role == "transfer":
            if self.surrogate is None:
                raise ValueError("an audit transfer unit needs the surrogate network (audit#surrogate_ckpt)")
            rows = self._attack_rows(unit, test, IND_ATTACK_BUILDERS[p["audited"]], self.surrogate)
        else:  # more_steps, more_restarts, unbounded: the audited attack itself with other parameters
            rows = self._attack_rows(unit, test, IND_ATTACK_BUILDERS[p["audited"]], self.model)
        for r in rows:
            if r["attack"] == role:
                r["attack"] = p["audited"]
            r.update(sweep=unit.sweep, audit_role=role, head=unit.head, steps=unit.steps)
        return rows

    def _worst_noise(self, test: TestSet, eps: float, norm: str, seed: int, draws: int) -> list[dict]:
        """Uniform noise of the budget (`baselines.uniform_noise_rows`), the per-sample worst point error of
        `draws` draws: random search with `draws` queries, the least a gradient attack must beat."""
        from diskrobust.robustness.baselines import uniform_noise_rows

        worst: dict[int, dict] = {}
        for d in range(draws):
            for r in uniform_noise_rows(self.model, test, [eps], norm, seed=seed + d, batch_size=self.cfg.batch_size):
                best = worst.get(r["sample_id"])
                if best is None or float(r["point_error_px"]) > float(best["point_error_px"]):
                    worst[r["sample_id"]] = r
        return [worst[i] for i in sorted(worst)]

    def _trivial_rows(self, unit: Unit, test: TestSet, seed: int) -> list[dict]:
        """The network on images every L-inf eps-1 attacker can reach: constant 0, 0.5, 1 and uniform noise."""
        gen = torch.Generator().manual_seed(seed)
        noise = torch.rand(test.images.shape, generator=gen)
        images = {f"constant_{v:g}": torch.full_like(test.images, v) for v in (0.0, 0.5, 1.0)}
        images["uniform_0_1"] = noise
        rows = []
        for name, reached in images.items():
            for _, ids in _batches(len(test), self.cfg.batch_size):
                x = self._dev(test.images[ids])
                points, mask = self._dev(test.points[ids]), self._dev(test.mask[ids])
                adv = self._dev(reached[ids])
                met = _evaluate(self.model, adv, points, mask, mask, test.spacing_mm)
                rows += [{**r, "attack": name} for r in _rows(unit, ids, test, met, None, adv - x, "truth")]
        return rows

    def _ood(self, unit: Unit) -> list[dict]:
        from diskrobust.attacks import OODAttack

        n = self.n_ood
        size = tuple(self.test.images.shape[-2:])
        starts_all = _ood_starts(unit.attack, n, size, self.cfg.seed)
        targets_all = self.ood_targets()
        # The attacked head decides which target terms the attack sees; metrics always use all of them.
        use = {"points": ("points",), "seg": ("mask",), "both": ("points", "mask")}[unit.head]
        seed = derive_seed(self.cfg.seed, unit.key)
        rows = []
        for b, ids in _batches(n, self.cfg.batch_size):
            start = self._dev(starts_all[ids])
            tgt = {k: self._dev(v[ids]) for k, v in targets_all.items()}
            if unit.eps > 0:
                attack = OODAttack(self.model, eps=unit.eps, steps=unit.params["steps"], lr=unit.params["lr"],
                                   optimizer=unit.params["optimizer"], random_start=unit.params["random_start"],
                                   seed=seed + b, chunk_size=self.chunk_size,
                                   progress=self.progress and unit.params["steps"] >= self.INNER_BAR_STEPS)
                res = attack(start, {k: tgt[k] for k in use if k in tgt})
                adv, losses, deltas = res.images, res.losses, res.deltas
            else:
                adv, losses, deltas = start, None, None
            met = _evaluate(self.model, adv, tgt.get("points"), tgt.get("polygon"), tgt.get("mask"),
                            self.test.spacing_mm)
            rows += _rows(unit, ids, self.test, met, losses, deltas, "target")
            if b == 0 and self.tb is not None and self.tb.num_images:
                self.tb.log_ood_examples(unit.prefix, unit.eps, ids, start.cpu(), adv.cpu(),
                                         self.test.images[ids], None if "points" not in tgt else tgt["points"].cpu(),
                                         None if met["_pred"] is None else met["_pred"].cpu())
        return rows



# sweep name -> how a unit of it is computed (Runner method); planning is in units.plan_units.
SWEEP_KINDS: dict[str, Callable[[Runner, Unit], list[dict]]] = {
    "clean": Runner._clean, "ind": Runner._ind, "ood": Runner._ood, "audit": Runner._audit}


def run_robustness_sweep(model: nn.Module, dataset, config: SweepConfig | Mapping, output_dir: str | Path,
                         writer=None, progress: bool = True, run_info: Mapping | None = None,
                         surrogate: nn.Module | None = None) -> dict:
    """Run (or resume) the clean / IND / OOD sweep of `model` on `dataset` and its gradient-masking audit;
    write all result files.

    Args:
        model: the network (on its device), returning {"pred": (B, 176, 2), "seg": (B, 1, H, W)} (either may be absent).
        dataset: test patches, see `load_test_set` (DiskPatchDataset, list of dicts or TestSet).
        config: a SweepConfig or a dict for `SweepConfig.from_dict`.
        output_dir: where the files go (see module docstring and docs/robustness_evaluation.md).
        writer: None, a SummaryWriter, a log folder, or an AttackTensorBoardLogger: TensorBoard output
            for the units computed in this call.
        progress: tqdm bars over the units (the sweep's, then the audit's).
        run_info: extra facts recorded in config.json (checkpoint, dataset, network definition).
        surrogate: the audit's transfer source, a network of the same architecture; None loads
            `audit#surrogate_ckpt` when given (`network.load_surrogate`).

    Returns {"output_dir", "files": {name: path}, "aggregate": ..., "masking_audit": ..., "computed": [unit keys],
    "reused": [...], "seconds"}.
    """
    cfg = config if isinstance(config, SweepConfig) else SweepConfig.from_dict(config)
    cfg.validate()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = load_test_set(dataset, cfg.num_samples)
    check_heads(cfg, network_outputs(model, tuple(test.images.shape[1:])))
    image_size = tuple(test.images.shape[-2:])
    tb = writer if isinstance(writer, AttackTensorBoardLogger) or writer is None else \
        AttackTensorBoardLogger(writer, cfg.tensorboard_images)
    if tb is not None:
        tb.num_images = min(tb.num_images, cfg.tensorboard_images)
    if surrogate is None and cfg.audit.enabled and cfg.audit.surrogate_ckpt:
        surrogate = load_surrogate(model, cfg.audit.surrogate_ckpt)
    if not cfg.audit.enabled:
        surrogate = None

    base = {"model": model_fingerprint(model), "data": test.fingerprint(), "seed": cfg.seed,
            "num_samples": len(test), "batch_size": cfg.batch_size}
    layout, layout_times = _attack_layout(model, test, cfg, out / "config.json", base)
    # channels_last takes other convolution algorithms, and PGD's sign steps then part from the NCHW ones
    # where a gradient is near zero: its units are keyed apart. Chunks do the same arithmetic per sample
    # (at most a BLAS kernel chosen by the row count rounds differently), so a unit does not depend on
    # them: a resumed run, or the parts of a split evaluation, may chunk differently and still share units.
    if layout.channels_last:
        base["layout"] = "channels_last"
    units = plan_units(cfg, image_size)
    audit_units = plan_audit_units(cfg, image_size, None if surrogate is None else model_fingerprint(surrogate))
    info = {"sweep": cfg.to_dict(), "num_test_samples": len(test), "model_fingerprint": base["model"],
            "data_fingerprint": base["data"], "units": len(units), "audit_units": len(audit_units),
            "surrogate_fingerprint": None if surrogate is None else model_fingerprint(surrogate),
            "attack_layout": {**asdict(layout), "autotune_seconds": layout_times},
            "environment": results.environment_info(), **dict(run_info or {})}
    files = {"config": atomic_write_json(out / "config.json", info)}
    log = EventLog(out / "sweep.log")
    log.write(event="start", profile=cfg.profile, units=len(units), audit_units=len(audit_units), model=base["model"],
              data=base["data"], channels_last=layout.channels_last, chunk_size=layout.chunk_size,
              layout_autotuned=bool(layout_times))

    was_training = model.training
    model.eval()
    runner = Runner(layout_model(model, layout.channels_last), test, cfg, tb, progress, surrogate=surrogate,
                    chunk_size=layout.chunk_size)
    all_rows: list[dict] = []
    audit_rows: list[dict] = []
    computed, reused = [], []
    t_start = time.perf_counter()

    def run_units(todo: Sequence[Unit], desc: str, rows_out: list[dict]) -> None:
        bar = tqdm(todo, desc=desc, disable=not progress, unit="unit")
        for unit in bar:
            bar.set_postfix_str(unit.key, refresh=False)
            path = out / "units" / f"{unit.key}.json"
            fingerprint = unit_fingerprint(base, unit)
            rows = load_unit(path, fingerprint)
            if rows is not None:
                reused.append(unit.key)
                log.write(event="reused", unit=unit.key)
            else:
                t0 = time.perf_counter()
                rows = runner.run(unit)
                seconds = time.perf_counter() - t0
                atomic_write_json(path, {"fingerprint": fingerprint, "unit": unit.key, "params": unit.params,
                                         "seconds": seconds, "rows": rows})
                computed.append(unit.key)
                summary = unit_summary(rows, cfg.tolerance_px)
                log.write(event="computed", unit=unit.key, seconds=round(seconds, 3), **summary)
                if tb is not None and unit.sweep != "audit":  # the audit's rows are no curve of their own
                    if unit.sweep == "clean":
                        for attack in (cfg.ind.attacks if cfg.ind.enabled else []):
                            for head in cfg.ind.heads:
                                tb.log_scalars(f"ind/{attack}/{head}", 0.0, summary)
                    else:
                        tb.log_scalars(unit.prefix, unit.eps, summary)
            rows_out += rows

    try:
        run_units(units, "robustness sweep", all_rows)
        if audit_units:
            run_units(audit_units, "gradient-masking audit", audit_rows)
    finally:
        model.train(was_training)
        if tb is not None:
            tb.flush()

    agg = results.aggregate(all_rows, cfg.tolerance_px)
    per_sample = []
    for r in all_rows:
        err = float(r["point_error_px"])
        per_sample.append({**r, "within_tolerance": "" if math.isnan(err) else int(err <= cfg.tolerance_px)})
    files["per_sample"] = results.write_rows_csv(out / "per_sample.csv", per_sample,
                                                 columns=results.ROW_COLUMNS + ("within_tolerance",))
    if audit_rows:  # a file of its own: the audit's rows never enter the sweep's tables, curves or aggregates
        files["audit_rows"] = results.write_rows_csv(out / "audit.csv", audit_rows,
                                                     columns=results.ROW_COLUMNS + ("audit_role",))
    # The masking audit goes first: a defence that only hides its gradients is flagged before any number.
    masking = audit_json(all_rows + audit_rows, cfg.audit)
    files["aggregate"] = atomic_write_json(out / "aggregate.json", {"profile": cfg.profile, "masking_audit": masking,
                                                                    **agg})
    header = report_header(cfg, info, test)
    header = header[:2] + audit_markdown(all_rows + audit_rows, cfg.audit) + [""] + header[2:]
    report = results.markdown_report(agg, header, spacing_mm=test.spacing_mm)
    files["report"] = atomic_write_text(out / "report.md", report)
    files["plots"] = results.plot_curves(agg, out / "plots")
    if tb is not None:
        tb.log_summary(report, files["plots"])
        tb.flush()
    seconds = time.perf_counter() - t_start
    log.write(event="done", computed=len(computed), reused=len(reused), seconds=round(seconds, 3),
              audit=masking["status"])
    return {"output_dir": str(out), "files": files, "aggregate": agg, "masking_audit": masking,
            "computed": computed, "reused": reused, "seconds": seconds}


def _attack_layout(model: nn.Module, test: TestSet, cfg: SweepConfig, previous_config: Path,
                   base: Mapping) -> tuple[AttackLayout, dict]:
    """The layout the attacks run in: the fixed settings, or for "auto" the one timed fastest
    (`tune_attack_layout`). A resumed run takes the "auto" choice its earlier run made on the same model,
    data and batch size (from `config.json`), so that a re-timing cannot make its cached channels_last
    units stale (or its NCHW ones)."""
    channels_last, chunk_size = cfg.channels_last, cfg.chunk_size
    if AUTO in (channels_last, chunk_size) and previous_config.is_file():
        try:
            before = json.loads(previous_config.read_text())
            same = (before.get("model_fingerprint"), before.get("data_fingerprint"),
                    before.get("sweep", {}).get("batch_size")) == (base["model"], base["data"], cfg.batch_size)
            chosen = before.get("attack_layout") if same else None
        except (OSError, ValueError, AttributeError):
            chosen = None
        if isinstance(chosen, Mapping):
            channels_last = bool(chosen.get("channels_last")) if channels_last == AUTO else channels_last
            chunk_size = chosen.get("chunk_size") if chunk_size == AUTO else chunk_size
    device = next(model.parameters()).device
    return tune_attack_layout(model, test.images[:cfg.batch_size].to(device), _tuning_heads(cfg), channels_last,
                              chunk_size)


def _tuning_heads(cfg: SweepConfig) -> tuple[str, ...] | None:
    """The outputs the sweep's attacks read: the point head alone when no unit attacks the seg head."""
    heads = set(cfg.ind.heads if cfg.ind.enabled else []) | set(cfg.ood.heads if cfg.ood.enabled else [])
    return ("pred",) if heads <= {"points"} else None


def _budgets(values: Sequence[float], norm: str, image_size: Sequence[int]) -> str:
    from diskrobust.robustness.config import absolute_l2

    if norm == "l2":
        return ", ".join(f"{v:g} (L2 {absolute_l2(v, image_size):.4g})" for v in values)
    return ", ".join(f"{v:g}" for v in values)


def report_header(cfg: SweepConfig, info: Mapping, test: TestSet) -> list[str]:
    """The report's first lines, written from the settings that ran (never from a profile's prose)."""
    ind, ood = cfg.ind, cfg.ood
    env = info.get("environment", {})
    size = tuple(test.images.shape[-2:])
    h, w = size
    lines = [f"# Robustness evaluation (profile `{cfg.profile}`)", "",
             "Settings as run (from `config.json`):", ""]
    if info.get("checkpoint"):
        lines.append(f"- checkpoint: `{info['checkpoint']}` (sha256 {str(info.get('checkpoint_sha256', ''))[:12]})")
    lines.append(f"- test patches: {len(test)} of {h} x {w} px from `{test.source}` (patch spacing "
                 f"{test.spacing_mm:g} mm/px), seed {cfg.seed}, batch {cfg.batch_size}")
    if ind.enabled:
        grids = "; ".join(f"{a}: eps {_budgets(ind.eps[a], IND_ATTACKS[a], size)}" for a in ind.attacks)
        lines.append(f"- IND: PGD, {ind.steps} steps, step = eps x {ind.step_ratio:g}, update {ind.update}, "
                     f"random start {'yes' if ind.random_start else 'no'}, {ind.restarts} restart(s), "
                     f"heads {', '.join(ind.heads)}, point loss {ind.point_loss}; {grids}")
        if any(a.startswith("autoattack") for a in ind.attacks):
            lines.append(f"  (autoattack_*: RegressionAutoAttack, APGD {ind.steps} steps x {ind.restarts} restart(s) "
                         f"per objective, then Square with {ind.queries} queries; heads points, seg only)")
        if any(IND_ATTACKS[a] == "l2" for a in ind.attacks):
            lines.append("  (L2 budgets are per pixel as an RMS; the absolute L2 radius, in brackets, is "
                         f"RMS x sqrt({h} x {w}))")
    else:
        lines.append("- IND: not run (ind#enabled false)")
    if ood.enabled:
        n_ood = min(len(test), ood.num_samples or len(test))
        lines.append(f"- OOD: starts {', '.join(ood.starts)}; budget per pixel (RMS) "
                     f"{_budgets(ood.eps_rms, 'l2', size)}, i.e. absolute L2 in brackets = RMS x sqrt({h} x {w}); "
                     f"{ood.steps} steps, {ood.optimizer} lr {ood.lr:g}, random start "
                     f"{'yes' if ood.random_start else 'no'}, heads {', '.join(ood.heads)}, {n_ood} targets")
    else:
        lines.append("- OOD: not run (ood#enabled false)")
    audited = audited_attack(cfg)
    if cfg.audit.enabled and audited is not None:
        a = cfg.audit
        n = min(len(test), a.num_samples)
        lines.append(f"- audit: `{audited}` on head points, first {n} test patches: uniform "
                     f"noise (worst of {a.noise_draws} draws), Square from the clean image ({a.queries} queries), "
                     f"{a.steps_factor} x steps, {a.restarts_factor} x restarts"
                     + (", L-inf eps 1 with constant / noise images" if a.unbounded and IND_ATTACKS[audited] == "linf"
                        else "")
                     + (f", transfer from `{info.get('surrogate_checkpoint') or 'a surrogate network'}`"
                        if info.get("surrogate_fingerprint") else ", no surrogate (transfer skipped)"))
    else:
        lines.append("- audit: no audit rows (" + ("audit#enabled false" if not cfg.audit.enabled
                                                   else "no IND attack on the point head") + ")")
    lines.append(f"- tolerance: {cfg.tolerance_px:g} px; versions: torch {env.get('torch')}, monai {env.get('monai')}, "
                 f"diskrobust {env.get('diskrobust')}, git {env.get('git_commit')}")
    return lines
