from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def meta_schema() -> Path:
    """MONAI's public bundle metadata schema, vendored in the repository (tests never read outside it)."""
    path = REPO_ROOT / "bundles" / "meta_schema_20240725.json"
    if not path.exists():
        pytest.fail(f"bundle metadata schema not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A small phantom dataset (6 subjects, T2, 256 x 256 px at 1.2 mm, seed 0; split 4/1/1): its folder.

    Holds images/, labels/, contours/, datalist.json and phantom.json (see docs/data.md). Read-only for tests.
    """
    from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset

    out = tmp_path_factory.mktemp("tiny_phantom")
    write_phantom_dataset(out, subjects=6, seed=0, config=PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2)), progress=False)
    return out


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for the whole suite: with anything else on a 2-core machine, two torch
    threads wait on each other and run several times slower (docs/performance.md)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The tiny study grid of tests/test_study.py and tests/test_study_ray.py: one local run of it serves
# both (the Ray engine's results are compared with it), so its bundles run once per session.
TINY_STUDY = {
    "name": "tiny",
    "shape_modes": [3, 1000],  # 1000 PCA modes cannot be fitted on the tiny phantom: that arm must fail alone
    "methods": ["std", "adv_r"],
    "train": {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "width": 8, "num_workers": 0},
    "adversarial": {"adv_steps": 2, "adv_ramp_epochs": 1},
    "evaluation": {"sweep_overrides": {"num_samples": 3, "batch_size": 3, "tensorboard_images": 1,
                                       "ind": {"eps": {"linf": [0.01, 0.05]}, "heads": ["points", "seg"],
                                               "steps": 2},
                                       "ood": {"starts": ["uniform_noise"], "steps": 3, "num_samples": 2}}},
    "reduced": ["everything (a test)"],
}


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_phantom):
    """(config, outcomes) of TINY_STUDY run once with the local engine (2 jobs) on the tiny phantom."""
    import json

    from diskrobust.study.grid import load_study_config
    from diskrobust.study.runner import run_study

    folder = tmp_path_factory.mktemp("tiny_study")
    path = folder / "tiny.json"
    path.write_text(json.dumps({**TINY_STUDY, "dataset": {"dataset_dir": str(tiny_phantom)}}))
    cfg = load_study_config(path, folder / "out")
    return cfg, run_study(cfg, progress=False, jobs=2)


def read_tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in `log_dir`: tag -> [(step, value), ...] in file order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.fixture
def tensorboard_scalars():
    """`read_tensorboard_scalars`, for tests that read back what a run logged."""
    return read_tensorboard_scalars
