from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(os.environ.get("RODIMUS_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/official"))


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    """The official-code reference folders (../shared/fixtures/official beside the repo)."""
    if not (FIXTURES / "rodimus" / "fixture.safetensors").is_file():
        pytest.fail(
            f"official fixtures not found at {FIXTURES}: the repo expects ../shared/fixtures/official beside it "
            "(or set RODIMUS_FIXTURES to the folder)"
        )
    return FIXTURES
