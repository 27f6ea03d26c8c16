"""OOD detectors: Mahalanobis fit/score/save, differentiability, adaptive attack, honesty, AUROC; the candidates
of ood_robust (input statistics, outlier exposure with attacks, ensemble): FPR, gradients, files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diskrobust.attacks import OODAttack, targets_from_model, uniform_noise
from diskrobust.datasets import DiskPatchDataset
from diskrobust.data.errors import DataError
from diskrobust.defenses import (DetectorHinge, EnsembleDetector, HeadAgreementDetector, InputStatsDetector,
                                 MahalanobisDetector, OutlierExposureDetector, auroc, detection_rate, detector_scores,
                                 evaluate_detector, ledoit_wolf_covariance, threshold_at_tpr, train_outlier_exposure)
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet

SIZE, SPACING, WIDTH = 64, 1.0, 8


def _images(dataset) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))]).float()


@pytest.fixture(scope="module")
def trained(tiny_phantom):
    """A DiskShapeNet(width 8, 64 px) trained 40 steps on tiny_phantom's training patches, + patch images."""
    datalist = tiny_phantom / "datalist.json"
    train = DiskPatchDataset(datalist, "training", SIZE, SPACING)
    held_out = torch.cat([_images(DiskPatchDataset(datalist, s, SIZE, SPACING)) for s in ("validation", "test")])
    images = _images(train)
    points = torch.stack([torch.as_tensor(train[i]["points"]) for i in range(len(train))]).float()
    masks = torch.stack([torch.as_tensor(train[i]["mask"]) for i in range(len(train))]).float()
    torch.manual_seed(0)
    net = DiskShapeNet(width=WIDTH, spatial_size=SIZE)
    net.set_mean_shape(points.mean(0))
    opt = torch.optim.Adamax(net.parameters(), lr=3e-3)
    loss_fn = DiskShapeLoss()
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(40):
        idx = torch.randint(len(images), (8,), generator=gen)
        opt.zero_grad()
        loss_fn(net(images[idx]), {"points": points[idx], "mask": masks[idx]}).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    net.eval()
    return net, images, held_out


@pytest.fixture(scope="module")
def detector(trained):
    net, images, _ = trained
    return MahalanobisDetector(net).fit(net, images)


def _snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()],
            [p.requires_grad for p in net.parameters()])


def _assert_untouched(net, snap):
    state, modes, grads = snap
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == grads
    assert all(p.grad is None for p in net.parameters())


def test_fit_and_score_shapes(trained, detector):
    net, images, held_out = trained
    assert detector.mean.shape == (WIDTH * 8,) and detector.precision.shape == (WIDTH * 8, WIDTH * 8)
    assert detector.num_samples == len(images) and 0.0 <= detector.shrinkage <= 1.0
    scores = detector.score(held_out[:3])
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores >= 0).all()
    two = MahalanobisDetector(net, stages=(-2, -1)).fit(images)
    assert two.mean.shape == (WIDTH * 4 + WIDTH * 8,)
    assert two(held_out[:2], None).shape == (2,)


def test_score_before_fit_and_bad_inputs(trained):
    net, _, held_out = trained
    with pytest.raises(RuntimeError, match="before fit"):
        MahalanobisDetector(net).score(held_out[:1])
    with pytest.raises(ValueError, match="stage"):
        MahalanobisDetector(net, stages=(7,))
    with pytest.raises(ValueError, match="N >= 2"):
        MahalanobisDetector(net).fit(held_out[:1])


def test_ind_scores_below_uniform_noise(trained, detector):
    _, _, held_out = trained
    ind = detector.score(held_out).detach()
    noise = detector.score(uniform_noise(8, SIZE, generator=torch.Generator().manual_seed(1))).detach()
    assert noise.min() > ind.max()
    assert auroc(ind, noise) == 1.0


def test_score_is_differentiable_wrt_input_only(trained, detector):
    net, _, held_out = trained
    snap = _snapshot(net)
    x = held_out[:2].clone().requires_grad_(True)
    detector.score(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    _assert_untouched(net, snap)


def test_adaptive_attack_lowers_detector_score(trained, detector):
    net, _, held_out = trained
    snap = _snapshot(net)
    starts = uniform_noise(3, SIZE, generator=torch.Generator().manual_seed(2))
    targets = targets_from_model(net, held_out[:3])
    kw = dict(eps=8.0, steps=30, lr=0.01, seed=0, progress=False)
    plain = OODAttack(net, **kw)(starts, targets)
    adaptive = OODAttack(net, detector=detector, detector_weight=1.0, **kw)(starts, targets)
    with torch.no_grad():
        s_plain, s_adaptive = detector.score(plain.images), detector.score(adaptive.images)
    assert s_adaptive.mean() < 0.8 * s_plain.mean()
    _assert_untouched(net, snap)


def test_auroc_against_hand_computed_values():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 2], [0, 3]) == 0.5
    assert auroc([1.0], [1.0]) == 0.5
    # OOD 0.9 beats all 4; 0.4 beats 0.1 and 0.35, ties 0.4 (half); 0.2 beats 0.1 -> 7.5 / 12
    assert auroc([0.1, 0.4, 0.35, 0.8], [0.9, 0.4, 0.2]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        auroc([], [1.0])


def test_threshold_at_tpr_and_detection_rate():
    scores = torch.arange(1, 21, dtype=torch.float32)
    assert threshold_at_tpr(scores, 0.95) == 19.0
    assert threshold_at_tpr(scores, 1.0) == 20.0
    assert threshold_at_tpr(scores[torch.randperm(20)], 0.5) == 10.0
    assert detection_rate(scores, 19.0) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        threshold_at_tpr(scores, 0.0)


def test_ledoit_wolf_is_between_sample_covariance_and_scaled_identity():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(10, 20)) * np.linspace(0.5, 3, 20))
    mean, cov, shrink = ledoit_wolf_covariance(x)
    assert torch.allclose(mean, x.mean(0))
    assert 0.0 < shrink < 1.0
    assert torch.linalg.eigvalsh(cov).min() > 0  # positive definite although N < D
    xc = x - mean
    s = xc.T @ xc / 10
    mu = torch.trace(s) / 20
    assert torch.allclose(cov, (1 - shrink) * s + shrink * mu * torch.eye(20, dtype=s.dtype))


def test_save_load_round_trip(tmp_path, trained, detector):
    net, _, held_out = trained
    path = detector.save(tmp_path / "det.npz")
    loaded = MahalanobisDetector.load(path, net)
    assert loaded.stages == detector.stages and loaded.num_samples == detector.num_samples
    assert torch.allclose(loaded.score(held_out[:4]), detector.score(held_out[:4]), rtol=1e-5, atol=1e-5)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="bad.npz"):
        MahalanobisDetector.load(bad, net)
    state = detector.state_dict()
    state["mean"] = state["mean"][:-1]
    with pytest.raises(DataError, match="do not match"):
        MahalanobisDetector(net).load_state_dict(state)


def test_evaluate_detector_rows_and_untouched_model(trained, detector):
    net, _, held_out = trained
    snap = _snapshot(net)
    gen = torch.Generator().manual_seed(3)
    starts = {"uniform_noise": uniform_noise(2, SIZE, generator=gen), "flat": torch.full((2, 1, SIZE, SIZE), 0.5)}
    result = evaluate_detector(net, detector, held_out, starts, {"eps": 4.0, "steps": 3, "progress": False},
                               adaptive_weights=(0.0, 1.0))
    assert set(result["kinds"]) == {"uniform_noise", "flat"}
    for rows in result["kinds"].values():
        assert set(rows) == {"clean", "w=0", "w=1"}
        for r in rows.values():
            for key in ("auroc", "detection_rate", "fooled_rate", "success_rate"):
                assert 0.0 <= r[key] <= 1.0
            assert r["point_distance_px"] >= 0
    assert result["kinds"]["uniform_noise"]["clean"]["auroc"] == 1.0
    assert result["strongest_adaptive"] == {"uniform_noise": "w=1", "flat": "w=1"}
    assert detection_rate(result["ind_scores"], result["threshold"]) <= 0.05 + 1e-9
    _assert_untouched(net, snap)


def test_head_agreement_detector(trained):
    net, _, held_out = trained
    snap = _snapshot(net)
    det = HeadAgreementDetector(net)
    s = det(held_out[:3])
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
    x = held_out[:2].clone().requires_grad_(True)
    det(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    _assert_untouched(net, snap)
    with pytest.raises(ValueError, match="both"):
        HeadAgreementDetector(DiskShapeNet(width=8, spatial_size=SIZE, seg_head=False))


# --- candidates meant to survive the adaptive attack (ood_robust) ---------------------------------------

@pytest.fixture(scope="module")
def ind_streams(tiny_phantom):
    """Three disjoint draws of shape-augmented IND patches (fit, calibration, held-out), 120 each: enough
    patches for a 5 % false-positive rate to mean something, unlike the tiny phantom's 10 held-out ones."""
    from diskrobust.datasets import ShapeAugmentedDataset
    from diskrobust.transforms import ShapePCA

    bank = DiskPatchDataset(tiny_phantom / "datalist.json", "training", SIZE, SPACING).bank
    pca = ShapePCA.fit(bank.points)
    return [_images(ShapeAugmentedDataset(bank, pca, n_modes=min(4, pca.num_modes), samples_per_epoch=120, seed=s))
            for s in (11, 12, 13)]


def _held_out_fpr(detector, calib, held_out, fpr=0.05):
    threshold = threshold_at_tpr(detector_scores(detector, calib), 1 - fpr)
    return detection_rate(detector_scores(detector, held_out), threshold), threshold


def test_input_stats_detector_fpr_gradient_and_file(tmp_path, ind_streams, trained):
    fit, calib, held_out = ind_streams
    det = InputStatsDetector().fit(fit)
    rate, threshold = _held_out_fpr(det, calib, held_out)
    # 5 % of 120 exchangeable held-out patches: 6 expected; 1-14 covers the binomial spread
    assert 1 / 120 <= rate <= 14 / 120
    noise = uniform_noise(4, SIZE, generator=torch.Generator().manual_seed(4))
    assert (det(noise) > threshold).all()
    x = held_out[:2].clone().requires_grad_(True)
    det(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    loaded = InputStatsDetector.load(det.save(tmp_path / "stats.npz"))
    assert torch.allclose(loaded(held_out[:4]), det(held_out[:4]), rtol=1e-5, atol=1e-5)
    bad = tmp_path / "stats_bad.npz"
    np.savez(bad, format="diskrobust-mahalanobis/1")
    with pytest.raises(DataError, match="stats_bad.npz"):
        InputStatsDetector.load(bad)


def test_outlier_exposure_trains_on_attacked_outliers_and_leaves_the_model_alone(tmp_path, trained, ind_streams):
    net, images, held_out = trained
    snap = _snapshot(net)
    torch.manual_seed(0)
    det = OutlierExposureDetector(width=4)
    targets = targets_from_model(net, images)
    losses = train_outlier_exposure(det, net, ind_streams[0], targets, iterations=20, batch=8, attack_steps=2,
                                    seed=0)
    _assert_untouched(net, snap)
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert not det.training
    noise = uniform_noise(8, SIZE, generator=torch.Generator().manual_seed(9))
    assert auroc(detector_scores(det, held_out), detector_scores(det, noise)) >= 0.9
    x = held_out[:2].clone().requires_grad_(True)
    det(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    loaded = OutlierExposureDetector.load(det.save(tmp_path / "oe.pt"))
    assert torch.allclose(loaded.score(held_out[:3]), det.score(held_out[:3]))
    (tmp_path / "oe_bad.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="oe_bad.pt"):
        OutlierExposureDetector.load(tmp_path / "oe_bad.pt")


def test_ensemble_splits_the_false_positive_rate_and_is_differentiable(tmp_path, trained, ind_streams):
    net, _, _ = trained
    fit, calib, held_out = ind_streams
    members = {"input stats": InputStatsDetector().fit(fit), "head agreement": HeadAgreementDetector(net)}
    ens = EnsembleDetector(members).calibrate(calib, fpr=0.05)
    assert ens.heads is None  # head agreement reads the network's outputs
    # union bound: each member flags at most 2.5 % of the calibration set, the ensemble at most 5 %
    assert detection_rate(detector_scores(ens, calib), 0.0) <= 0.05 + 1e-9
    assert detection_rate(detector_scores(ens, held_out), 0.0) <= 14 / 120
    x = held_out[:2].clone().requires_grad_(True)
    ens(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    path = ens.save_calibration(tmp_path / "ens.npz")
    again = EnsembleDetector(members).load_calibration(path)
    assert again.thresholds == ens.thresholds and again.scales == ens.scales
    with pytest.raises(DataError, match="ens.npz"):
        EnsembleDetector({"input stats": members["input stats"]}).load_calibration(path)


def test_detector_hinge_is_zero_once_safely_below_the_threshold():
    def det(images, outputs=None):
        return images.flatten(1).mean(1)

    hinge = DetectorHinge(det, threshold=0.5, scale=0.1, margin=0.5)
    x = torch.tensor([0.0, 0.44, 0.5, 0.9]).view(4, 1, 1, 1)
    assert torch.allclose(hinge(x), torch.tensor([0.0, 0.0, 0.5, 4.5]), atol=1e-6)
    with pytest.raises(ValueError, match="finite threshold"):
        DetectorHinge(det, threshold=math.inf)
