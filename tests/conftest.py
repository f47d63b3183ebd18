"""Shared test fixtures: where the read-only WikiText-2 copy lives."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def wikitext2_path() -> Path:
    """WikiText-2 directory: $WIKITEXT2_DIR, else ../shared/data/wikitext-2 beside the repo."""
    return Path(os.environ.get("WIKITEXT2_DIR", REPO.parent / "shared" / "data" / "wikitext-2"))


@pytest.fixture(scope="session")
def wikitext2_dir() -> Path:
    path = wikitext2_path()
    if not (path / "train.txt").is_file():
        pytest.skip(f"WikiText-2 not found at {path} (set WIKITEXT2_DIR)")
    return path
