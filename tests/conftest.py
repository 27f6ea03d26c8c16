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
