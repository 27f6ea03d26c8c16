"""RegressionAutoAttack: a parameter-free ensemble for the disk shape network (AutoAttack for regression).

The members run one after the other on the whole batch: APGD on each objective (with restarts), then the
query-based Square attack on the criterion itself, started from each sample's worst case so far, so it
can only raise it (a regression loss has no "already fooled" samples, so every sample may still gain).
Per sample the result is the worst case over all members by the criterion (the evaluation metric, not
the members' own losses), with the name of the member that found it. Nothing to tune: APGD chooses its
own step sizes; the budget, the number of iterations, restarts and queries are the only settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ._base import Attack, AttackResult, check_images, heads_of, run_model
from .apgd import APGD
from .objectives import Objective, build_objective, mean_point_distance
from .pgd import NORMS, _targets_on
from .square import SquareAttack


def point_distance_criterion(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean point distance (px) to the target points, (B,): the point error the study reports."""
    return mean_point_distance(outputs["pred"], targets["points"])


point_distance_criterion.heads = ("pred",)

# criterion -> (its objective for the query attack, the APGD members' objectives (objective, point_loss))
CRITERIA: dict[str, tuple[Objective | str, tuple[tuple[str, str], ...]]] = {
    "points": (point_distance_criterion, (("points", "sse"), ("points", "mae"), ("both", "sse"))),
    "seg": ("seg", (("seg", "sse"), ("both", "sse"))),
}


@dataclass
class EnsembleResult(AttackResult):
    """AttackResult (losses = the criterion at images) plus, per sample, the member that found the worst
    case (`member`, names) and every member's criterion value (`member_losses`, name -> (B,))."""

    member: list[str] = field(default_factory=list)
    member_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class RegressionAutoAttack(Attack):
    """APGD on each objective with restarts, then Square on the criterion; the per-sample worst case.

    Args:
        model: the network (wrappers unwrapped); never modified.
        eps: budget (L-inf per pixel or L2 per image) on [0, 1] intensities.
        norm: "linf" | "l2".
        criterion: what "worst" means: "points" (mean point distance, px; members APGD on the point SSE,
            the point MAE and SSE + soft Dice) | "seg" (1 - soft Dice; members APGD on it and on both).
        steps: APGD iterations per restart (100, as AutoAttack).
        restarts: APGD restarts per objective.
        queries: Square queries per sample (0: no query attack).
        targeted: minimise the criterion towards `targets` (every member targeted).
        seed: member i uses seed + i.
        chunk_size: passed to the APGD members.
        progress: tqdm bars of the members.

    `attack(images, targets)` -> EnsembleResult.
    """

    def __init__(self, model: nn.Module, eps: float = 0.07, norm: str = "linf", criterion: str = "points",
                 steps: int = 100, restarts: int = 1, queries: int = 1000, targeted: bool = False,
                 seed: int = 0, chunk_size: int | None = None, progress: bool = False):
        super().__init__(model, seed)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
        if int(queries) != queries or queries < 0:
            raise ValueError(f"queries must be an integer >= 0, got {queries}")
        query_objective, apgd_objectives = CRITERIA[criterion]
        self.criterion = build_objective(query_objective)
        self.targeted = bool(targeted)
        self.members: list[tuple[str, Attack]] = []
        for i, (objective, point_loss) in enumerate(apgd_objectives):
            name = f"apgd-{objective}" + (f"-{point_loss}" if objective in ("points", "both") else "")
            self.members.append((name, APGD(model, eps=eps, steps=steps, norm=norm, objective=objective,
                                            point_loss=point_loss, targeted=targeted, restarts=restarts,
                                            seed=seed + i, chunk_size=chunk_size, progress=progress)))
        self.square = None
        if queries:
            self.square = SquareAttack(model, eps=eps, queries=queries, norm=norm, objective=self.criterion,
                                       targeted=targeted, seed=seed + len(self.members), progress=progress)
        self.eps, self.norm = float(eps), norm

    def member_names(self) -> list[str]:
        return [name for name, _ in self.members] + (["square"] if self.square is not None else [])

    def _criterion(self, images, targets):
        with torch.no_grad():
            return self.criterion(run_model(self.model, images, heads_of(self.criterion)), targets)

    def forward(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> EnsembleResult:
        x = check_images(images, "RegressionAutoAttack")
        targets = _targets_on(targets, x)
        sign = -1.0 if self.targeted else 1.0
        view = (-1,) + (1,) * (x.ndim - 1)
        best_images = x.clone()
        best = self._criterion(x, targets)  # the clean image is the floor (a member can only raise it)
        member = ["clean"] * x.shape[0]
        member_losses: dict[str, torch.Tensor] = {}

        def take(name: str, candidate: torch.Tensor) -> None:
            nonlocal best, best_images
            value = self._criterion(candidate, targets)
            member_losses[name] = value
            better = sign * value > sign * best
            best = torch.where(better, value, best)
            best_images = torch.where(better.view(view), candidate, best_images)
            for i in torch.nonzero(better).flatten().tolist():
                member[i] = name

        for name, attack in self.members:
            take(name, attack.forward(x, targets).images)  # already inside this call's attack context
        if self.square is not None:
            take("square", self.square.forward(x, targets, start=best_images).images)
        return EnsembleResult(images=best_images, losses=best, deltas=best_images - x, member=member,
                              member_losses=member_losses)

    def member_summary(self, result: EnsembleResult) -> dict[str, int]:
        """How many samples each member's result was the worst case for."""
        return {name: result.member.count(name) for name in ["clean"] + self.member_names()}

