from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest runs things in parallel processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
