"""Shared test configuration.

Triton kernels run in the CPU interpreter when no GPU is present: the variable
must be set before triton (or so2ops.triton) is first imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (runs whenever one is present)")
    config.addinivalue_line("markers", "slow: longer cases, still run in CI")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
