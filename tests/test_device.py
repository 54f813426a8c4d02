"""Tests of camlib.device: $CAMLIB_DEVICE overrides, and a bad value is a typed error, not torch's RuntimeError."""

from __future__ import annotations

import pytest
import torch

from camlib.device import available_devices, default_device, parse_device
from camlib.errors import InputError


def test_default_is_cuda_when_available_else_cpu(monkeypatch):
    monkeypatch.delenv("CAMLIB_DEVICE", raising=False)
    assert default_device() == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


@pytest.mark.parametrize("value,expected", [("cpu", "cpu"), (" cpu ", "cpu"), ("", None)])
def test_override(monkeypatch, value, expected):
    monkeypatch.setenv("CAMLIB_DEVICE", value)
    wanted = (
        torch.device(expected)
        if expected
        else (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    )
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


def test_available_devices_list_cpu_then_each_cuda_device_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert available_devices() == ("cpu", "cuda:0", "cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert available_devices() == ("cpu", "mps")


def test_the_default_device_is_one_of_the_available_devices_by_name(monkeypatch):
    monkeypatch.delenv("CAMLIB_DEVICE", raising=False)
    assert str(default_device()) in available_devices()


def test_parse_device_gives_canonical_cuda_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(parse_device(n)) for n in ("cuda", "cuda:1", " cpu ")] == ["cuda:0", "cuda:1", "cpu"]
    with pytest.raises(InputError, match="has 2 CUDA devices"):
        parse_device("cuda:2")
