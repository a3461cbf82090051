"""Fixtures every export test file shares: no hub access, and the tiny BPE tokenizer (one per test module)."""

import pytest

from tests.helpers.eval_common import make_tokenizer


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()
