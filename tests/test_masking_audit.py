"""The gradient-masking audit flags a network that hides its gradients and passes the same network without.

The toy: every contour point at s(x) = w . q(x) + c with q the identity (plain) or a staircase
round(8 x) / 8 (masked: zero gradient everywhere, yet the output still moves when a pixel crosses a step).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from diskrobust.attacks import PGD, SquareAttack, mean_point_distance
from diskrobust.attacks.autoattack import point_distance_criterion
from diskrobust.attacks.pgd import random_start
from diskrobust.robustness.masking_audit import (AuditItem, Tolerance, audit, curves_from_rows, overall_status, to_json,
                                                 to_markdown)

SIZE = 8
EPS = (0.01, 0.03, 0.05)


class Toy(nn.Module):
    def __init__(self, w, c, masked):
        super().__init__()
        self.register_buffer("w", w)
        self.c, self.masked = c, masked

    def forward(self, x):
        if self.masked:
            x = torch.round(x * 8) / 8
        s = (x * self.w).flatten(1).sum(1) + self.c
        return {"pred": s.view(-1, 1, 1).expand(-1, 176, 2)}


def setting(masked: bool):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, SIZE, SIZE, generator=gen)
    image = 0.55 + 0.004 * torch.rand(6, 1, SIZE, SIZE, generator=gen)  # just below the staircase edge 0.5625
    targets = {"points": torch.zeros(6, 176, 2)}
    surrogate = Toy(w + 0.7 * torch.randn(w.shape, generator=gen), 0.0, masked=False)
    return Toy(w, -float((image[0] * w).sum()), masked), surrogate, image, targets


def error(model, images, targets):
    with torch.no_grad():
        return mean_point_distance(model(images)["pred"], targets["points"]).numpy()


def curves(masked: bool):
    model, surrogate, image, targets = setting(masked)

    def pgd(eps, net=model, **kw):
        kw = {"steps": 10, "step_size": eps / 4, "seed": 0, **kw}
        return PGD(net, eps=eps, **kw)(image, targets).images

    white = {eps: error(model, pgd(eps), targets) for eps in EPS + (1.0,)}
    query = {eps: error(model, SquareAttack(model, eps=eps, queries=150, objective=point_distance_criterion,
                                            seed=0)(image, targets).images, targets) for eps in EPS}
    noise = {eps: error(model, (image + random_start(image, eps, "linf", torch.Generator().manual_seed(1))).clamp(0, 1),
                        targets) for eps in EPS}
    more_steps = {eps: error(model, pgd(eps, steps=30), targets) for eps in EPS}
    more_restarts = {eps: error(model, pgd(eps, restarts=3), targets) for eps in EPS}
    transfer = {eps: error(model, pgd(eps, net=surrogate), targets) for eps in EPS}
    trivial = {f"constant {v:g}": error(model, torch.full_like(image, v), targets) for v in (0.0, 0.5, 1.0)}
    noise_image = torch.rand(image.shape, generator=torch.Generator().manual_seed(2))
    trivial["uniform noise"] = error(model, noise_image, targets)
    return dict(white_box=white, query=query, noise=noise, more_steps=more_steps, more_restarts=more_restarts,
                transfer=transfer, trivial_at_unbounded=trivial)


def test_plain_network_passes_every_item():
    items = audit(**curves(masked=False))
    assert {i.name: i.status for i in items} == {name: "pass" for name in (
        "monotone_in_eps", "white_vs_query", "query_vs_noise", "white_vs_noise", "more_steps", "more_restarts",
        "unbounded_budget", "transfer")}, to_markdown(items)
    assert overall_status(items) == "pass"


def test_gradient_masked_network_fails():
    items = {i.name: i for i in audit(**curves(masked=True))}
    assert overall_status(items.values()) == "fail"
    # the query attack and the transfer attack both beat the (blind) gradient attack
    assert items["white_vs_query"].status == "fail", items["white_vs_query"]
    assert items["transfer"].status == "fail", items["transfer"]
    per_eps = items["white_vs_query"].numbers["per_eps"][0.05]
    assert per_eps["query"] > per_eps["white_box"] + per_eps["noise"]
    report = to_markdown(list(items.values()))
    assert report.startswith("**Gradient-masking audit: FAIL**") and "| white_vs_query | fail |" in report
    assert json.loads(json.dumps(to_json(list(items.values()))))["status"] == "fail"


def test_headline_says_pass_and_names_the_gaps_when_every_item_that_ran_passed():
    ran = [AuditItem("monotone_in_eps", "pass", "holds"), AuditItem("white_vs_noise", "pass", "holds")]
    gap = AuditItem("transfer", "skipped", "no surrogate")
    assert overall_status(ran + [gap]) == "skipped"  # aggregate.json keeps the gap visible
    assert to_markdown(ran + [gap]).startswith("**Gradient-masking audit: PASS, 1 of 3 skipped (transfer)**")
    assert to_markdown([gap]).startswith("**Gradient-masking audit: SKIPPED**")  # nothing ran: no pass claimed
    warned = ran + [gap, AuditItem("more_steps", "warn", "not converged")]
    assert to_markdown(warned).startswith("**Gradient-masking audit: WARN**")


def test_items_on_constructed_curves():
    rng = np.random.default_rng(0)
    base = {0.01: 1.0 + 0.01 * rng.standard_normal(50), 0.03: 2.0 + 0.01 * rng.standard_normal(50)}
    dropping = {0.01: base[0.01], 0.03: base[0.03], 0.05: base[0.03] - 0.5}
    assert audit(dropping)[0].status == "fail"
    assert audit({0.01: 1.0, 0.03: 0.995})[0].status == "pass"  # within 1 % (rtol): noise
    assert audit({0.01: 1.0, 0.03: 0.98})[0].status == "warn"
    # more steps raising the error by 20 %: the base attack was not converged
    items = {i.name: i for i in audit(base, more_steps={e: v * 1.2 for e, v in base.items()},
                                      more_restarts={e: v - 0.5 for e, v in base.items()})}
    assert items["more_steps"].status == "warn" and "not converged" in items["more_steps"].message
    assert items["more_restarts"].status == "fail"
    assert items["white_vs_query"].status == "skipped" and overall_status(items.values()) == "fail"
    # Dice: lower is worse for the network
    dice = audit({0.01: 0.9, 0.03: 0.95}, higher_is_worse=False)
    assert dice[0].status == "fail"
    assert audit({0.01: 1.0, 0.03: 0.9}, tolerance=Tolerance(rtol=0.2))[0].status == "pass"


def test_curves_from_rows_pairs_samples():
    rows = [{"attack": a, "eps": e, "sample_id": s, "point_error_px": 10 * e + s + (a == "square")}
            for a in ("pgd", "square") for e in (0.03, 0.01) for s in (2, 0, 1)]
    groups = curves_from_rows(rows)
    assert sorted(groups) == ["pgd", "square"] and list(groups["pgd"]) == [0.01, 0.03]
    np.testing.assert_allclose(groups["pgd"][0.01], [0.1, 1.1, 2.1])
    np.testing.assert_allclose(groups["square"][0.03], [1.3, 2.3, 3.3])
