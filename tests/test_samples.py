"""Tests of camlib.samples: the bundled scikit-image photos load offline as read-only uint8 RGB."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import skimage.data

from camlib import samples
from camlib.errors import CamlibError
from camlib.samples import DEFAULT_SAMPLE, SAMPLES, load_sample


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registry() -> None:
    assert list(SAMPLES) == ["chelsea (cat)", "coffee (cup)", "astronaut", "rocket", "motorcycle", "camera (grayscale)"]
    assert DEFAULT_SAMPLE == "chelsea (cat)" and DEFAULT_SAMPLE in SAMPLES


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_sample_loads_offline_as_read_only_rgb(name: str) -> None:
    samples._load.cache_clear()  # load for real (from scikit-image's bundled files), with the network off
    image = load_sample(name)
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= 64
    assert not image.flags.writeable
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1
    assert image.std() > 10  # a real photo, not a blank placeholder
    assert load_sample(name) is image  # cached


def test_default_sample_is_chelsea() -> None:
    chelsea = load_sample()
    assert chelsea.shape == (300, 451, 3)
    np.testing.assert_array_equal(chelsea, skimage.data.chelsea())


def test_known_shapes() -> None:
    assert load_sample("coffee (cup)").shape == (400, 600, 3)
    assert load_sample("astronaut").shape == (512, 512, 3)
    assert load_sample("camera (grayscale)").shape == (512, 512, 3)
    np.testing.assert_array_equal(load_sample("motorcycle"), skimage.data.stereo_motorcycle()[0])


def test_grayscale_sample_is_replicated_to_three_channels() -> None:
    camera = load_sample("camera (grayscale)")
    source = skimage.data.camera()
    assert source.ndim == 2
    for channel in range(3):
        np.testing.assert_array_equal(camera[..., channel], source)


def test_colour_samples_are_colour() -> None:
    chelsea = load_sample("chelsea (cat)").astype(int)
    assert np.abs(chelsea[..., 0] - chelsea[..., 2]).mean() > 5


@pytest.mark.parametrize("name", ["nope", "", "Chelsea (cat)", "chelsea", "../chelsea (cat)"])
def test_unknown_sample(name: str) -> None:
    with pytest.raises(CamlibError, match="unknown sample") as info:
        load_sample(name)
    assert isinstance(info.value, ValueError)
    assert "chelsea (cat)" in str(info.value)  # the message lists the choices
