"""The OOD budget bisection on a linear toy network whose needed budget is known in closed form."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diskrobust.robustness.ood_budget import (BUDGET_COLUMNS, JOINT_COLUMNS, Tolerance, budget_markdown,
                                              budget_ratio, budget_summary, detector_budget_comparison, l2_to_rms,
                                              measure, minimal_ood_budget, rms_to_l2, straight_line_budget,
                                              success_curve)

P = 64  # contour points (fewer than 176 so that 2P outputs fit in 16 x 16 pixels)


class LinearShapeNet(nn.Module):
    """pred = sigma * Q @ pool_f(x - 0.5) + c with orthonormal rows Q: (B, 1, S, S) -> {"pred": (B, P, 2)}.

    `pool` averages f x f blocks first, so the net at size S*f sees the same image content as at S.
    For a target t with residual r = t - pred(x), the L2 ball of radius b holds the least-squares step
    that shrinks r to (1 - b sigma_eff / ||r||) r (sigma_eff = sigma / f: pooling f x f divides the
    norm of a blockwise-constant delta by f), so the attack reaches mean point distance tau at
    b* = ||r|| / sigma_eff * (1 - tau / mpd(r)).
    """

    def __init__(self, size=16, pool=1, sigma=8.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = (size // pool) ** 2
        q, _ = torch.linalg.qr(torch.randn(n, 2 * P, generator=g, dtype=torch.float64))
        self.register_buffer("q", q.T.float().contiguous())  # (2P, n) orthonormal rows
        self.register_buffer("c", (16 + 2 * torch.randn(2 * P, generator=g)).float())
        self.sigma, self.pool = sigma, pool
        self.weight = nn.Parameter(torch.ones(()))  # a parameter, so the attack's freezing has something to guard

    def forward(self, x):
        z = x - 0.5
        if self.pool > 1:
            z = F.avg_pool2d(z, self.pool)
        out = self.weight * self.sigma * z.flatten(1) @ self.q.T + self.c
        return {"pred": out.view(-1, P, 2)}


def _problem(net, size, shift=1.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.02 * (torch.rand(2, 1, size, size, generator=g) - 0.5)
    with torch.no_grad():
        pred = net(x)["pred"]
    targets = pred + shift * torch.randn(pred.shape, generator=g)
    return x, {"points": targets}


def _analytic_rms(net, x, targets, tau, size):
    with torch.no_grad():
        r = (targets["points"] - net(x)["pred"]).flatten(1).double()
    mpd = r.view(-1, P, 2).norm(dim=-1).mean(-1)
    sigma_eff = net.sigma / net.pool
    b = r.norm(dim=1) / sigma_eff * (1 - tau / mpd)
    return (b / math.sqrt(size * size)).numpy()


def _lr(net):
    # plain gradient descent on the point MSE (1 / 2P sum e^2) converges fastest at lr = 1 / curvature
    return 2 * P / 2 * (net.pool ** 2) / net.sigma ** 2


@pytest.mark.parametrize("random_start", [False, True])
def test_bisection_finds_the_least_squares_budget(random_start):
    size, tau = 16, 1.0
    net = LinearShapeNet(size)
    x, targets = _problem(net, size)
    truth = _analytic_rms(net, x, targets, tau, size)
    rows = minimal_ood_budget(net, x, targets, Tolerance(tau, None), rms_max=0.5, iterations=9, steps=15,
                              lr=_lr(net), optimizer="sgd", random_start=random_start, seed=0, start="toy")
    assert [list(r) for r in rows] == [list(BUDGET_COLUMNS)] * 2
    for r, b in zip(rows, truth):
        assert r["reached"] and r["random_start"] is random_start
        width = 0.5 / 2 ** 9
        # the bracket (lo, needed] holds the closed-form budget (up to the optimiser's last bit)
        assert r["rms_lo"] - 1e-3 <= b <= r["rms_needed"] + 1e-3
        assert r["rms_needed"] - r["rms_lo"] <= width + 1e-12
        assert r["point_distance_px"] <= tau
        assert r["l2_needed"] == pytest.approx(r["rms_needed"] * size)
        assert r["delta_l2"] <= r["l2_needed"] + 1e-4
        assert r["start_point_distance_px"] > 1.5  # the start image is far from the target


def test_a_budget_per_pixel_means_the_same_at_every_patch_size():
    assert rms_to_l2(0.1, (64, 64)) == pytest.approx(6.4)
    assert rms_to_l2(0.1, (1, 128, 128)) == pytest.approx(12.8)
    assert l2_to_rms(40.0, (128, 128)) == pytest.approx(0.3125)  # the paper's L2 40 at 128 x 128
    # the same L2 of 40 on 64 x 64 patches is twice the per-pixel strength (the old demo's noise images)
    assert l2_to_rms(40.0, (64, 64)) == pytest.approx(0.625)
    # the same toy task at double resolution (each pixel split into 2 x 2) needs the same RMS but twice the L2
    small = LinearShapeNet(16)
    big = LinearShapeNet(32, pool=2)
    x16, targets = _problem(small, 16)
    x32 = x16.repeat_interleave(2, -1).repeat_interleave(2, -2)
    tol = Tolerance(1.0, None)
    kw = dict(rms_max=0.5, iterations=8, steps=15, optimizer="sgd", random_start=False, seed=0)
    r16 = minimal_ood_budget(small, x16, targets, tol, lr=_lr(small), **kw)
    r32 = minimal_ood_budget(big, x32, targets, tol, lr=_lr(big), **kw)
    for a, b in zip(r16, r32):
        assert b["rms_needed"] == pytest.approx(a["rms_needed"], abs=0.5 / 2 ** 8 + 1e-3)
        assert b["l2_needed"] == pytest.approx(2 * a["l2_needed"], rel=0.05)


def test_start_already_within_tolerance_and_unreachable_targets():
    size = 16
    net = LinearShapeNet(size)
    x, _ = _problem(net, size)
    with torch.no_grad():
        on_target = {"points": net(x)["pred"] + 0.1}
    done = []  # the progress callback: once per target (the study's progress view counts them)
    rows = minimal_ood_budget(net, x, on_target, Tolerance(1.0, None), rms_max=0.5, iterations=3, steps=5,
                              lr=_lr(net), optimizer="sgd", on_target=lambda i, n: done.append((i, n)))
    assert all(r["reached"] and r["rms_needed"] == 0.0 and r["delta_l2"] == 0.0 for r in rows)
    assert done == [(1, 2), (2, 2)]
    _, far = _problem(net, size, shift=200.0)
    rows = minimal_ood_budget(net, x, far, Tolerance(1.0, None), rms_max=0.05, iterations=3, steps=20,
                              lr=_lr(net), optimizer="sgd")
    assert all(not r["reached"] and r["rms_needed"] == math.inf and r["rms_lo"] == 0.05 for r in rows)
    assert success_curve(rows, [0.05, 1.0]) == [0.0, 0.0]


def test_a_failure_at_the_largest_budget_does_not_censor_a_target_a_smaller_ball_reaches():
    # Few, small steps from a random start: at rms_max the start lands too far out to be brought back, while
    # a smaller ball (still larger than the closed-form need) is searched successfully. The search must not
    # stop at the first failure and call the target unreachable.
    size, tau = 16, 1.0
    net = LinearShapeNet(size)
    x, targets = _problem(net, size, shift=0.8)
    truth = _analytic_rms(net, x, targets, tau, size)
    kw = dict(steps=3, lr=0.05 * _lr(net), optimizer="sgd", random_start=True, seed=0)
    at_max = minimal_ood_budget(net, x, targets, Tolerance(tau, None), rms_max=0.5, iterations=1, **kw)
    assert all(r["point_distance_px"] > tau for r in at_max)  # the attack itself fails in the large ball
    rows = minimal_ood_budget(net, x, targets, Tolerance(tau, None), rms_max=0.5, iterations=6, **kw)
    for r, b in zip(rows, truth):
        assert r["reached"] and r["point_distance_px"] <= tau
        assert b <= r["rms_needed"] <= 0.05  # found below the failed large budgets, above the closed-form need
        assert r["rms_lo"] < r["rms_needed"]


def test_success_curve_summary_and_table():
    rows = [{"rms_needed": v, "rms_max": 0.5, "start_point_distance_px": 3.0} for v in (0.0, 0.1, 0.2, math.inf)]
    assert success_curve(rows, [0.0, 0.1, 0.15, 0.5]) == [0.25, 0.5, 0.5, 0.75]
    s = budget_summary(rows)
    assert s["reached"] == 0.75 and s["n"] == 4 and s["start_point_distance_px_mean"] == 3.0
    assert 0.1 <= s["rms_median"] <= 0.2
    # a median among targets not reached is "not reached" (inf), never nan; a finite one stays exact
    for needed, median in (([0.1, 0.2, math.inf], 0.2), ([0.1, math.inf], math.inf), ([math.inf] * 3, math.inf)):
        got = budget_summary([{**rows[0], "rms_needed": v} for v in needed])
        assert got["rms_median"] == median and got["rms_q75"] == math.inf
    text = "\n".join(budget_markdown({"toy": s}, (64, 64), Tolerance()))
    assert "mean point distance <= 1 px and seg Dice >= 0.8" in text and "| toy | 4 | 75% |" in text


class _SegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return {"pred": torch.zeros(x.shape[0], P, 2), "seg": self.w * (x - 0.5)}


def test_measure_applies_the_criteria_the_network_and_targets_allow():
    x = torch.full((2, 1, 8, 8), 0.5)
    x[0, :, :4] = 1.0  # upper half positive
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1.0
    m = measure(_SegNet(), x, {"points": torch.zeros(2, P, 2), "mask": mask}, Tolerance(1.0, 0.8))
    assert m["success"].tolist() == [True, False]  # sample 1 predicts an empty mask
    assert m["seg_dice"][0] == pytest.approx(1.0)
    assert measure(_SegNet(), x, {"mask": mask}, Tolerance(None, 0.8))["success"].tolist() == [True, False]
    with pytest.raises(ValueError, match="applies to none"):
        measure(_SegNet(), x, {"mask": mask}, Tolerance(1.0, None))
    with pytest.raises(ValueError, match="needs a point distance"):
        Tolerance(None, None)


def test_run_ood_budget_on_the_real_network_and_the_profile_section(repo_root):
    import json

    from diskrobust.networks import DiskShapeNet
    from diskrobust.robustness.ood_budget import OodBudgetConfig, run_ood_budget

    section = json.loads((repo_root / "configs" / "study" / "findings.json").read_text())["ood_budget"]
    OodBudgetConfig.from_dict(section)  # the profile's section is valid
    with pytest.raises(ValueError, match="unknown key"):
        OodBudgetConfig.from_dict({**section, "rms_maxx": 1.0})
    torch.manual_seed(0)
    net = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1)).eval()
    test_images = torch.rand(2, 1, 32, 32)
    cfg = {**section, "num_targets": 2, "iterations": 1, "steps": 2, "starts": ["natural"],
           "tolerance": {"max_point_distance_px": 0.5, "min_seg_dice": None}}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = run_ood_budget(net, test_images, cfg, seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the attack changed nothing
    assert set(out["summaries"]) == {"natural / from start", "natural / random start"}
    assert len(out["rows"]) == 4 and out["shape"] == (32, 32)
    for r in out["rows"]:
        assert r["delta_l2"] <= rms_to_l2(section["rms_max"], (32, 32)) + 1e-4
        assert math.isfinite(r["start_point_distance_px"])
    assert all(len(c) == len(section["curve_rms"]) for c in out["curves"].values())


class _OrthogonalDetector:
    """score = <x - 0.5, u> with a unit u orthogonal to the toy net's rows: the net cannot see it, and
    lowering the score by d costs exactly L2 d, independent of the fooling step."""

    heads = ()

    def __init__(self, net, size, seed=5):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(size * size, generator=g)
        u = u - net.q.T @ (net.q @ u)
        self.u = u / u.norm()

    def __call__(self, images, outputs=None):
        return (images.flatten(1) - 0.5) @ self.u


def _toy_joint(size=16, d_rms=0.1):
    net = LinearShapeNet(size)
    x, targets = _problem(net, size)
    det = _OrthogonalDetector(net, size)
    s0 = det(x)
    threshold = float(s0.max()) - d_rms * size  # the sample with the higher score needs L2 exactly d_rms * size
    detect_rms = (s0 - threshold).clamp_min(0).numpy() / size
    return net, x, targets, det, threshold, detect_rms


def test_joint_budget_of_passing_the_detector_alone_is_exact():
    # targets already met at the start: the joint budget is the detector's alone, (s0 - threshold) in L2
    size = 16
    net, x, _, det, threshold, detect_rms = _toy_joint(size)
    with torch.no_grad():
        on_target = {"points": net(x)["pred"] + 0.1}
    rows = minimal_ood_budget(net, x, on_target, Tolerance(1.0, None), rms_max=0.5, iterations=9, steps=15,
                              lr=_lr(net), optimizer="sgd", detector=det, threshold=threshold,
                              detector_weights=(0.0, 1.0), detector_margin=0.0)
    width = 0.5 / 2 ** 9
    for r, b in zip(rows, detect_rms):
        assert r["reached"] and r["detector_score"] <= threshold + 1e-6
        assert r["rms_lo"] - 1e-4 <= b <= r["rms_needed"] + 1e-4 and r["rms_needed"] - r["rms_lo"] <= width + 1e-12
        assert r["start_detector_score"] > threshold


def test_adaptive_joint_attack_is_strictly_stronger_than_the_non_adaptive_one():
    size, tau = 16, 1.0
    net, x, targets, det, threshold, detect_rms = _toy_joint(size)
    fool_rms = _analytic_rms(net, x, targets, tau, size)
    # fooling and hiding act on orthogonal directions: the least L2 doing both is the hypotenuse
    truth = np.sqrt(fool_rms ** 2 + detect_rms ** 2)
    kw = dict(rms_max=0.5, iterations=8, steps=15, lr=_lr(net), optimizer="sgd", detector=det, threshold=threshold,
              seed=0)
    plain = minimal_ood_budget(net, x, targets, Tolerance(tau, None), detector_weights=(0.0,), **kw)
    adaptive = minimal_ood_budget(net, x, targets, Tolerance(tau, None), detector_weights=(0.0, 1.0, 10.0), **kw)
    assert [list(r) for r in adaptive] == [list(BUDGET_COLUMNS + JOINT_COLUMNS)] * 2
    for p, a, b in zip(plain, adaptive, truth):
        # the non-adaptive attack fools the net but never moves along u: detected at every budget
        assert not p["reached"] and p["point_distance_px"] <= tau and p["detector_score"] > threshold
        assert a["reached"] and a["detector_weight"] > 0 and a["detector_score"] <= threshold
        # no attack beats the least-norm solution; the loss trade-off costs this one at most 20 %
        assert b - 1e-3 <= a["rms_needed"] <= 1.2 * b
    with pytest.raises(ValueError, match="finite threshold"):
        minimal_ood_budget(net, x, targets, detector=det, threshold=None)


def test_detector_budget_comparison_ratio_on_the_toy():
    size, tau = 16, 1.0
    net, x, targets, det, threshold, detect_rms = _toy_joint(size, d_rms=0.3)
    out = detector_budget_comparison(net, {"toy": (det, threshold, 1.0)}, {"toy_start": x}, targets,
                                     Tolerance(tau, None), rms_max=0.5, iterations=6, steps=15, lr=_lr(net),
                                     curve_rms=(0.0, 0.5))
    base = out["summaries"]["none (any attack)"]["toy_start"]["rms_median"]
    assert base == out["summaries"]["none"]["toy_start"]["rms_median"]  # the plain attack was the cheapest
    got = out["summaries"]["toy"]["toy_start"]["rms_median"]
    assert out["ratios"]["toy"]["toy_start"] == pytest.approx(got / base)
    assert out["ratios"]["toy"]["toy_start"] > 3  # hiding needs L2 0.3 per pixel, fooling about 0.065
    assert out["curves"]["none"]["toy_start"] == [0.0, 1.0]
    assert budget_ratio({"rms_median": math.inf}, {"rms_median": 0.1}) == math.inf
    assert math.isnan(budget_ratio({"rms_median": 0.2}, {"rms_median": math.inf}))


def test_straight_line_budget_matches_the_closed_form():
    # on the line x + t (p - x): the linear net's residual to pred(p) shrinks as (1 - t), the linear
    # detector's score moves linearly, so the first good t is the larger of the two thresholds
    size, tau = 16, 1.0
    net, x, _, det, threshold, _ = _toy_joint(size)
    g = torch.Generator().manual_seed(7)
    p = 0.5 + 0.9 * (torch.rand(x.shape, generator=g) - 0.5)
    # both source patches pass the detector; for the first, hiding sets the budget, for the second, fooling
    below = torch.tensor([0.05, 5.0])
    p = p - ((det(p) - threshold + below)[:, None] * det.u).view_as(p)
    with torch.no_grad():
        targets = {"points": net(p)["pred"]}
        mpd0 = (net(x)["pred"] - targets["points"]).norm(dim=-1).mean(-1)
    s0, s1 = det(x), det(p)
    t_fool, t_hide = 1 - tau / mpd0, (s0 - threshold) / (s0 - s1)
    assert t_hide[0] > t_fool[0] > 0 and t_fool[1] > t_hide[1] > 0
    t_star = torch.maximum(t_fool, t_hide)
    truth = (t_star * (p - x).flatten(1).norm(dim=1) / size).numpy()
    got = straight_line_budget(net, x, p, targets, Tolerance(tau, None), det, threshold, points=400)
    step = ((p - x).flatten(1).norm(dim=1) / size / 400).numpy()
    assert np.all(got >= truth - 1e-6) and np.all(got <= truth + step + 1e-6)
    plain = straight_line_budget(net, x, p, targets, Tolerance(tau, None), points=400)
    assert plain[0] < got[0]  # without the detector only the fooling threshold counts
    assert plain[1] == pytest.approx(got[1])
