import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def meta_schema() -> Path:
    path = SHARED / "schemas" / "meta_schema_20240725.json"
    if not path.exists():
        pytest.fail(f"bundle metadata schema not found at {path}")
    return path
