"""Tests of camlib.device: $CAMLIB_DEVICE overrides, and a bad value is a typed error, not torch's RuntimeError."""

from __future__ import annotations

import pytest
import torch

from camlib.device import default_device
from camlib.errors import InputError


def test_default_is_cuda_when_available_else_cpu(monkeypatch):
    monkeypatch.delenv("CAMLIB_DEVICE", raising=False)
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value,expected", [("cpu", "cpu"), (" cpu ", "cpu"), ("", None)])
def test_override(monkeypatch, value, expected):
    monkeypatch.setenv("CAMLIB_DEVICE", value)
    wanted = torch.device(expected) if expected else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert default_device() == wanted


@pytest.mark.bad_input(43)
@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cpu:0:1", "💻"])
def test_a_bad_value_is_a_typed_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("CAMLIB_DEVICE", value)
    with pytest.raises(InputError, match="CAMLIB_DEVICE"):
        default_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_typed_error(monkeypatch):
    monkeypatch.setenv("CAMLIB_DEVICE", "cuda")
    with pytest.raises(InputError, match="CUDA"):
        default_device()
