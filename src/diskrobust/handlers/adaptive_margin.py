"""Adaptive-margin adversarial training, in the spirit of IMA (Ma & Liang, "Increasing-Margin Adversarial
training"): every training disk carries its own L-inf budget eps_i, and the adversarial copy of a sample is
PGD at its own eps_i.

After each attack the budget of a disk that is still robust (the network's points on its attacked image
stay within `tolerance_px` mean point distance of the true points) grows by `eps_step`, up to `eps` (the
arm's eps_max, the same final budget as adv_r); the budget of a disk that was fooled shrinks by
`shrink_step` (0: it stays), down to `eps_min`. So the network is pushed hardest where it is already
robust and is not asked to fit attacks it cannot resist yet - the margin grows sample by sample instead
of the whole batch following one schedule (adv_r's ramp is not used).

Why a disk, not a dataset index: the training stream (`ShapeAugmentedDataset`) draws a fresh
shape-augmented sample per (seed, epoch, index), so an index is a different disk every epoch; the
source disk, `(subject, level)` in every batch, is what stays. Its augmented copies share its budget;
when one batch holds several copies of one disk, the budget grows only if all of them stayed robust.

The budgets are the handler's `state_dict()` (keys + eps, and the settings they were made under), saved
in every full checkpoint and restored on resume (`train_ima.json` adds the handler to the bundle's
CheckpointSaver / CheckpointLoader). Under torchrun every rank applies every rank's updates, so all ranks
hold the same budgets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from torch import nn

from diskrobust.attacks import PGD, attack_context
from diskrobust.attacks._base import run_model
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.metrics import mean_point_distance

logger = logging.getLogger(__name__)

STATE_FORMAT = "diskrobust-adaptive-margin/1"
# the settings a saved set of budgets was made under; resuming with other values is refused
_SETTINGS = ("eps", "eps_step", "shrink_step", "eps_min", "eps_init", "tolerance_px", "identity")


class AdaptiveMarginTrainingHandler(AdversarialTrainingHandler):
    """Clean + PGD samples at a per-disk budget that grows while the disk stays robust (mode "ima").

    Args:
        mode: must be "ima" (the argument exists so the bundle's `adv_mode` reaches it and a mismatch is refused).
        eps: eps_max, the largest budget any disk reaches (L-inf on [0, 1] intensities; paper 0.07).
        steps: PGD steps (paper 20).
        step_size: PGD step at eps_max; a disk at eps_i steps `step_size * eps_i / eps` (the same number of
            steps covers its smaller ball alike).
        eps_step: growth of a robust disk's budget per attack.
        shrink_step: decrease of a fooled disk's budget per attack; default `eps_step`; 0: it stays.
        eps_init: the budget of a disk not seen yet; default `eps_step`.
        eps_min: the smallest budget (default 0: a disk fooled at every budget is trained on clean copies).
        tolerance_px: a disk is robust when the mean point distance (px) of the network's points on its
            attacked image to the true points is <= this.
        identity: the batch keys that together name a disk (default `("subject", "level")`, what the
            bundle's datasets give); every key must be in every batch.
        random_start, point_loss, seed, network, summary_writer, tag_prefix, chunk_size, precision: as
            AdversarialTrainingHandler.

    After each iteration start, `engine.state` holds `adv_eps` (mean eps_i of the batch), `adv_eps_min`,
    `adv_eps_max`, `adv_robust_fraction` (share of the batch that stayed robust), `adv_loss_points`,
    `adv_loss`, `adv_losses`. TensorBoard (`summary_writer`), per iteration: `<tag_prefix>/eps` (batch
    mean), `eps_min`, `eps_max`, `robust_fraction`, `loss_points`; per epoch, over every disk seen so far
    (step = the epoch's last iteration): `budget_mean`, `budget_min`, `budget_max`, `budget_at_max`
    (share of disks at eps_max), `budget_disks`.
    """

    adaptive_margin = True

    def __init__(self, mode: str = "ima", eps: float = 0.07, steps: int = 20, step_size: float = 0.01,
                 eps_step: float = 0.005, shrink_step: float | None = None, eps_init: float | None = None,
                 eps_min: float = 0.0, tolerance_px: float = 2.0, identity: Sequence[str] = ("subject", "level"),
                 random_start: bool = True, point_loss: str = "sse", seed: int = 0, network: nn.Module | None = None,
                 summary_writer=None, tag_prefix: str = "adversarial", chunk_size: int | None = None,
                 precision: str = "fp32"):
        if mode != "ima":
            raise ValueError(f"AdaptiveMarginTrainingHandler runs adv_mode 'ima', got {mode!r}: drop "
                             "configs/train_ima.json from the config files for the other arms, or set --adv_mode ima")
        super().__init__(mode, eps=eps, steps=steps, step_size=step_size, ramp_epochs=None,
                         random_start=random_start, point_loss=point_loss, seed=seed, network=network,
                         summary_writer=summary_writer, tag_prefix=tag_prefix, chunk_size=chunk_size,
                         precision=precision)
        self.eps_step = float(eps_step)
        self.shrink_step = self.eps_step if shrink_step is None else float(shrink_step)
        self.eps_min = float(eps_min)
        self.eps_init = self.eps_step if eps_init is None else float(eps_init)
        self.tolerance_px = float(tolerance_px)
        self.identity = tuple(str(k) for k in ([identity] if isinstance(identity, str) else identity))
        for name in ("eps_step", "shrink_step", "eps_min", "eps_init", "tolerance_px"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eps_step <= 0:
            raise ValueError(f"eps_step must be > 0 (budgets would never grow), got {self.eps_step}")
        if not self.eps_min <= self.eps_init <= self.eps:
            raise ValueError(f"need eps_min <= eps_init <= eps (eps_max), got {self.eps_min}, {self.eps_init}, "
                             f"{self.eps}")
        if not self.identity:
            raise ValueError("identity must name at least one batch key (default ('subject', 'level'))")
        self.budgets: dict[str, float] = {}

    # ------------------------------------------------------------------ the rule

    def budget(self, key: str) -> float:
        return self.budgets.get(key, self.eps_init)

    def update_budgets(self, keys: Sequence[str], robust: Sequence[bool]) -> dict[str, bool]:
        """Apply one attack's outcomes: per disk, grow if every copy of it in `keys` stayed robust, else
        shrink. Returns {key: robust} as applied (each disk once)."""
        if len(keys) != len(robust):
            raise ValueError(f"{len(keys)} keys but {len(robust)} outcomes")
        verdict: dict[str, bool] = {}
        for key, ok in zip(keys, robust):
            verdict[key] = verdict.get(key, True) and bool(ok)
        for key, ok in verdict.items():
            eps = self.budget(key)
            self.budgets[key] = min(self.eps, eps + self.eps_step) if ok else max(self.eps_min, eps - self.shrink_step)
        return verdict

    def sample_keys(self, batch: Mapping, size: int) -> list[str]:
        """The disk identity of each sample of `batch`: its `identity` values joined by '/'."""
        missing = [k for k in self.identity if k not in batch]
        if missing:
            raise ValueError(f"the adaptive-margin arm keeps one budget per training disk, named by the batch keys "
                             f"{list(self.identity)}; this batch has no {missing} (keys: {sorted(batch)}). Give the "
                             "dataset items those keys or set identity= to keys they have")
        columns = []
        for k in self.identity:
            values = batch[k]
            values = values.tolist() if torch.is_tensor(values) else list(values)
            if len(values) != size:
                raise ValueError(f"batch key {k!r} has {len(values)} values for {size} images")
            columns.append([str(v) for v in values])
        return ["/".join(parts) for parts in zip(*columns)]

    def summary(self) -> dict[str, float]:
        """mean / min / max budget over every disk seen so far, the share at eps_max and their number."""
        if not self.budgets:
            return {"budget_disks": 0.0}
        values = torch.tensor(list(self.budgets.values()), dtype=torch.float64)
        return {"budget_mean": float(values.mean()), "budget_min": float(values.min()),
                "budget_max": float(values.max()), "budget_at_max": float((values >= self.eps - 1e-12).double().mean()),
                "budget_disks": float(values.numel())}

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        keys = sorted(self.budgets)
        return {"format": STATE_FORMAT, "keys": keys,
                "eps": torch.tensor([self.budgets[k] for k in keys], dtype=torch.float64),
                "settings": self._settings()}

    def load_state_dict(self, state: Mapping) -> None:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not adaptive-margin budgets (expected format {STATE_FORMAT!r}): the checkpoint's "
                             "'adversarial' entry comes from another handler; start over (--overwrite true) or "
                             "resume with the configs that wrote it")
        saved = dict(state.get("settings", {}))
        if saved != self._settings():
            diff = {k: (saved.get(k), v) for k, v in self._settings().items() if saved.get(k) != v}
            raise ValueError(f"the checkpoint's per-disk budgets were made with other adaptive-margin settings "
                             f"(setting: (checkpoint, now)) {diff}; resume with the same settings or start over")
        keys, eps = list(state["keys"]), torch.as_tensor(state["eps"], dtype=torch.float64)
        if eps.shape != (len(keys),):
            raise ValueError(f"adaptive-margin state holds {len(keys)} keys but {tuple(eps.shape)} budgets")
        self.budgets = dict(zip(keys, eps.tolist()))

    def _settings(self) -> dict:
        return {"eps": self.eps, "eps_step": self.eps_step, "shrink_step": self.shrink_step, "eps_min": self.eps_min,
                "eps_init": self.eps_init, "tolerance_px": self.tolerance_px, "identity": list(self.identity)}

    # ------------------------------------------------------------------ the engine

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if not engine.has_event_handler(self.log_summary, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_summary)

    def __call__(self, engine: Engine) -> None:
        batch, network, device, image, targets = self._batch_on_device(engine, ("image", "points"))
        size = image.shape[0]
        keys = self.sample_keys(batch, size)
        eps = torch.tensor([self.budget(k) for k in keys], dtype=torch.float64)
        step = eps * (self.step_size / self.eps) if self.eps > 0 else torch.zeros_like(eps)
        attack = PGD(network, eps=eps, steps=self.steps, step_size=step, norm="linf", random_start=self.random_start,
                     objective="points", point_loss=self.point_loss,
                     generator=self._generator(device, engine.state.iteration), chunk_size=self.chunk_size,
                     precision=self.precision)
        result = attack(image, targets)
        with attack_context(network), torch.no_grad():
            pred = run_model(network, result.images, ("pred",))["pred"]
        robust = (mean_point_distance(pred, targets["points"]) <= self.tolerance_px).tolist()
        self._update_all_ranks(keys, robust)

        new_batch = self.replace_batch(engine, batch, image, targets, [("points", 1.0, result.images, result.losses)])
        loss = float(result.losses.mean())
        values = {"eps": float(eps.mean()), "eps_min": float(eps.min()), "eps_max": float(eps.max()),
                  "robust_fraction": sum(robust) / size, "loss_points": loss}
        engine.state.adv_eps, engine.state.adv_eps_min, engine.state.adv_eps_max = \
            values["eps"], values["eps_min"], values["eps_max"]
        engine.state.adv_robust_fraction = values["robust_fraction"]
        engine.state.adv_losses = {"points": loss}
        engine.state.adv_loss = engine.state.adv_loss_points = loss
        logger.debug("iteration %d: eps %.4f [%.4f, %.4f], robust %.2f, batch %d -> %d", engine.state.iteration,
                     values["eps"], values["eps_min"], values["eps_max"], values["robust_fraction"], size,
                     new_batch["image"].shape[0])
        if self.summary_writer is not None:
            for tag, value in values.items():
                self.summary_writer.add_scalar(f"{self.tag_prefix}/{tag}", value, engine.state.iteration)

    def _update_all_ranks(self, keys: list[str], robust: list[bool]) -> None:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            self.update_budgets(keys, robust)
            return
        # every rank sees other disks; each applies all ranks' outcomes, in rank order, so all hold the same budgets
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (keys, robust))
        for rank_keys, rank_robust in gathered:
            self.update_budgets(rank_keys, rank_robust)

    def log_summary(self, engine: Engine) -> None:
        summary = self.summary()
        for tag, value in summary.items():
            setattr(engine.state, f"adv_{tag}", value)
        logger.info("epoch %d: per-disk budgets %s", engine.state.epoch,
                    ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        if self.summary_writer is not None:
            for tag, value in summary.items():
                self.summary_writer.add_scalar(f"{self.tag_prefix}/{tag}", value, engine.state.iteration)
