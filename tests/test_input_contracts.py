"""Every public camlib function refuses a violated input contract with a typed camlib error naming the argument
(bad-inputs row 43): wrong shapes, dtypes, containers, value ranges and devices.

``CASES`` is the table: one row per (function, argument) with the bad values fed to that argument while every other
argument is valid. ``test_every_public_function_is_covered`` walks camlib's modules, so a new public function
without a row here (or a reasoned entry in ``EXEMPT``) fails the suite.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import camlib
from camlib import (
    augment,
    batch,
    cam,
    checkpoints,
    cifar,
    cifar_models,
    cli,
    contracts,
    cost,
    device,
    drawing,
    evaluation,
    guard,
    imaging,
    layers,
    layouts,
    metrics,
    models,
    overlay,
    parsing,
    pixel_attribution,
    prediction_cache,
    samples,
    stability,
    storage,
    targets,
    train,
)
from camlib.batch import files as batch_files
from camlib.batch import ray_engine
from camlib.errors import CamlibError


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )


MODEL = _tiny_model()
META_MODEL = _tiny_model().to("meta")
IMAGE = np.zeros((8, 8, 3), np.uint8)
IMAGES = np.zeros((2, 8, 8, 3), np.uint8)
CAM = np.full((8, 8), 0.5, np.float32)
X = torch.zeros(1, 3, 8, 8)
PRE = models.Preprocessing(resize=8, crop=8)
SPEC = next(iter(models.MODELS.values()))
PIPELINE = augment.Pipeline((augment.PipelineStep("HorizontalFlip"),), seed=0)
LAYOUT = layouts.Layout("nchw", channels=4, height=8, width=8)
INFO = layers.LayerInfo("0", "Conv2d", LAYOUT, (4, 8, 8))
PROBS = np.full((2, 10), 0.1, np.float32)
DATA = cifar.CifarData(IMAGES, np.zeros(2, np.int64), tuple(cifar.CLASS_NAMES), "test", "", "test")
X2 = torch.zeros(2, 3, 8, 8)  # two images, for the metrics
MAPS2 = np.full((2, 8, 8), 0.5, np.float32)
MATCHING = augment.Pipeline((augment.PipelineStep("HistogramMatching", {"blend_ratio": (1.0, 1.0)}),), seed=0)
SCORES = {"deletion_auc": 0.2, "insertion_auc": 0.6, "road": 0.1}  # mean faithfulness scores of one method


def _grid(pipeline: augment.Pipeline = PIPELINE) -> augment.GridResult:
    return augment.augment_grid(IMAGES, pipeline, rows=1, cols=2)


def _silu_model() -> nn.Module:
    """No rectifier anywhere: guided backpropagation would be the plain gradient."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )


def _biasless_model() -> nn.Module:
    """No convolution with a bias and no batch norm: FullGrad has no bias term."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )


def _one_class_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    )


def _explain_edges(_model: nn.Module, x: torch.Tensor, _classes: list[int]) -> np.ndarray:
    return metrics.baseline_maps(x, "edges")


def _result() -> cam.CamResult:
    return cam.compute_cams(MODEL, X, ["0"])


# --- families of bad values -----------------------------------------------------------------------------------------


def not_arrays() -> dict[str, object]:
    """Containers that are not numpy arrays."""
    return {"None": None, "list": IMAGE.tolist(), "tensor": torch.from_numpy(IMAGE.copy()), "str": "image.png"}


def bad_images() -> dict[str, object]:
    """Violations of the ``uint8 (H, W, 3)`` image contract."""
    return {
        **not_arrays(),
        "float64": IMAGE.astype(np.float64),
        "float32 0-1": np.full((8, 8, 3), 0.5, np.float32),
        "bool": IMAGE.astype(bool),
        "int64": IMAGE.astype(np.int64),
        "object": IMAGE.astype(object),
        "chw": np.zeros((3, 8, 8), np.uint8),
        "rgba": np.zeros((8, 8, 4), np.uint8),
        "batch": IMAGES,
        "5-D": np.zeros((1, 1, 8, 8, 3), np.uint8),
        "1-D": np.zeros(8, np.uint8),
        "empty": np.zeros((0, 8, 3), np.uint8),
        "zero side": np.zeros((8, 0, 3), np.uint8),
    }


def bad_batches() -> dict[str, object]:
    """Violations of the ``uint8 (N, H, W, 3)`` batch contract."""
    return {
        **not_arrays(),
        "float64": IMAGES.astype(np.float64),
        "bool": IMAGES.astype(bool),
        "object": IMAGES.astype(object),
        "nchw": np.zeros((2, 3, 8, 8), np.uint8),
        "one image": IMAGE,
        "5-D": IMAGES[None],
        "no images": np.zeros((0, 8, 8, 3), np.uint8),
        "zero side": np.zeros((2, 0, 8, 3), np.uint8),
    }


def bad_maps(ndim: int = 2) -> dict[str, object]:
    """Violations of the ``float (h, w)`` map in [0, 1] contract."""
    good = np.full((2,) * (ndim - 2) + (8, 8), 0.5, np.float32)
    return {
        "None": None,
        "list": good.tolist(),
        "tensor": torch.from_numpy(good),
        "object": good.astype(object),
        "bool": good > 0,
        "NaN": np.where(np.eye(8, dtype=bool), np.nan, good).astype(np.float32),
        "Inf": np.full_like(good, np.inf),
        "above 1": good * 3,
        "negative": good - 1,
        "extra dim": good[None],
        "missing dim": good[0],
        "empty": np.zeros((2,) * (ndim - 2) + (0, 8), np.float32),
    }


def bad_tensors(ndim: int) -> dict[str, object]:
    """Violations of a float ``ndim``-D tensor contract (the CPU-only stand-in for a wrong device is ``meta``)."""
    good = torch.rand((2, 4, 8, 8)[4 - ndim :] if ndim <= 4 else (1,) * (ndim - 4) + (2, 4, 8, 8))
    return {
        "None": None,
        "numpy": good.numpy(),
        "list": good.tolist(),
        "int": good.long(),
        "bool": good > 0.5,
        "missing dim": good[0],
        "extra dim": good[None],
        "empty": good[:0],
        "meta": good.to("meta"),
    }


def bad_timer_sizes() -> dict[str, object]:
    """``bad_sizes`` for the cost timers, which also take an int (a square side): zero and a bool instead."""
    return {k: v for k, v in bad_sizes().items() if k != "int"} | {"zero": 0, "bool": True}


def bad_shapes() -> dict[str, object]:
    """Values that are no tensor shape: not a tuple, a float or a negative dimension."""
    return {"None": None, "str": "1x4x8x8", "floats": (1, 4.5, 8, 8), "negative": (1, 4, -8, 8)}


def bad_sizes() -> dict[str, object]:
    """Violations of a ``(H, W)`` pair of positive pixel counts."""
    return {
        "None": None,
        "int": 8,
        "one": (8,),
        "three": (8, 8, 8),
        "zero": (0, 8),
        "negative": (8, -1),
        "float": (8.5, 8),
        "str": "8x8",
        "bool": (True, 8),
    }


def bad_ints(low: int = 1) -> dict[str, object]:
    """Violations of an integer ``>= low``."""
    return {"None": None, "float": 1.5, "str": "4", "bool": True, "below": low - 1, "negative": low - 5}


def bad_models() -> dict[str, object]:
    """Not a usable ``nn.Module``: None, a function, and a model whose weights are on ``meta``."""
    return {"None": None, "function": lambda x: x, "meta weights": META_MODEL}


def bad_pipelines() -> dict[str, object]:
    return {"None": None, "list of steps": [augment.PipelineStep("HorizontalFlip")], "dict": {"steps": []}}


def bad_texts() -> dict[str, object]:
    return {"None": None, "int": 3, "list": ["a"], "bytes": b"x"}


def bad_specs() -> dict[str, object]:
    return {"None": None, "key string": "resnet18", "dict": {"arch": "resnet18"}}


def bad_probabilities() -> dict[str, object]:
    return {
        "None": None,
        "list": PROBS.tolist(),
        "1-D": PROBS[0],
        "3-D": PROBS[None],
        "no classes": PROBS[:, :0],
        "NaN": np.full_like(PROBS, np.nan),
        "above 1": PROBS * 20,
        "negative": PROBS - 1,
        "str": "p",
    }


def bad_labels() -> dict[str, object]:
    return {
        "None": None,
        "float": np.array([0.5, 1.5]),
        "2-D": np.zeros((2, 2), np.int64),
        "object": np.array(["a", "b"], object),
        "str": "01",
        "bool": np.array([True, False]),
    }


def _bad_stability_maps() -> dict[str, object]:
    return {k: v for k, v in bad_maps().items() if k not in ("above 1", "negative")} | {"other shape": CAM[:4]}


def _bad_metric_x() -> dict[str, object]:
    """Violations of the metrics' float ``(B, C, H, W)`` input (the maps are ``MAPS2``, ``(2, 8, 8)``)."""
    return {k: v for k, v in bad_tensors(4).items() if k != "missing dim"} | {
        "3-D": X2[:, 0],
        "channels last": torch.rand(2, 8, 8, 3),
    }


def _faithfulness(keyword: str, value: object) -> dict[str, object]:
    """``faithfulness_scores``' arguments, valid except ``keyword``."""
    return {"model": MODEL, "x": X2, "maps": MAPS2, "class_idx": 0, "steps": 2} | {keyword: value}


def _bad_scores() -> dict[str, object]:
    """Violations of ``{metric: mean score or (B,) scores}`` with the keys of ``metrics.METRIC_DIRECTIONS``."""
    return {
        "None": None,
        "empty": {},
        "list": [0.5],
        "unknown metric": {"auc": 0.5},
        "NaN": {"road": float("nan")},
        "Inf": {"road": np.array([0.1, np.inf])},
        "str": {"road": "0.5"},
        "bool": {"road": True},
        "no scores": {"road": []},
        "ragged": {"road": [[0.1], [0.2, 0.3]]},
        "None score": {"road": None},
    }


def _stability(**changes: object) -> object:
    """``augmentation_stability`` with valid arguments except ``changes``."""
    arguments = {"model": MODEL, "images": IMAGES, "pipeline": PIPELINE, "layer": "0", "preprocessing": PRE}
    return stability.augmentation_stability(**(arguments | {"n_views": 1} | changes))


def _stability_views(**changes: object) -> object:
    """``stability_views`` with valid arguments except ``changes``."""
    arguments = {"model": MODEL, "image": IMAGE, "pipeline": PIPELINE, "layer": "0", "preprocessing": PRE}
    return stability.stability_views(**(arguments | {"n_views": 1} | changes))


def _flip_curve(**changes: object) -> object:
    """``flip_curve`` with valid arguments except ``changes`` (it varies a Rotate step's limit)."""
    rotate = augment.Pipeline((augment.PipelineStep("Rotate"),), seed=0)
    arguments = {"model": MODEL, "images": IMAGES, "pipeline": rotate, "layer": "0", "preprocessing": PRE}
    return stability.flip_curve(**(arguments | {"sweep": stability.Sweep(0, "limit", (0.0,)), "n_views": 1} | changes))


# --- the table ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """``call(bad)`` calls ``function`` with ``bad`` as ``argument`` and valid values for every other argument."""

    function: Callable
    argument: str
    call: Callable[[object], object]
    bad: Callable[[], dict[str, object]]


def _layers_no_uint8_images() -> dict[str, object]:
    # A bare layer name ("0") is a documented convenience of compute_cams (tested in test_cam.py), not a violation.
    return {"None": None, "list of ints": [0], "empty": [], "bytes": b"0", "int": 0}


CASES: list[Case] = [
    # cam
    Case(cam.minmax_normalize, "maps", cam.minmax_normalize, lambda: bad_tensors(3)),
    Case(
        cam.finish_maps,
        "raw",
        lambda v: cam.finish_maps(v, (8, 8)),
        lambda: {k: v for k, v in bad_maps(3).items() if k not in ("above 1", "negative")},
    ),
    Case(cam.finish_maps, "size", lambda v: cam.finish_maps(np.zeros((1, 4, 4), np.float32), v), bad_sizes),
    Case(
        cam.compute_cam_grid,
        "options",
        lambda v: cam.compute_cam_grid(MODEL, X, ["0"], ["gradcam"], options=v),
        lambda: {"dict": {"seed": 1}, "str": "gradcam", "int": 3},
    ),
    Case(
        cam.compute_cam_grid,
        "methods",
        lambda v: cam.compute_cam_grid(MODEL, X, ["0"], v),
        lambda: {"None": None, "empty": [], "str": "gradcam", "unknown": ["gradcam", "nope"], "int": 3},
    ),
    Case(cam.upsample_maps, "maps", lambda v: cam.upsample_maps(v, (8, 8)), lambda: bad_tensors(3)),
    Case(cam.upsample_maps, "size", lambda v: cam.upsample_maps(torch.rand(1, 4, 4), v), bad_sizes),
    Case(cam.eigen_projection, "acts", cam.eigen_projection, lambda: bad_tensors(4)),
    Case(
        cam.compute_cams,
        "x",
        lambda v: cam.compute_cams(MODEL, v, ["0"]),
        lambda: {
            **bad_tensors(4),
            "channels last": torch.randn(1, 32, 32, 3),
            "zero side": torch.zeros(1, 3, 0, 8),
            "float64 numpy": np.zeros((1, 3, 8, 8)),
        },
    ),
    Case(cam.compute_cams, "model", lambda v: cam.compute_cams(v, X, ["0"]), bad_models),
    Case(cam.compute_cams, "layer", lambda v: cam.compute_cams(MODEL, X, v), _layers_no_uint8_images),
    Case(
        cam.compute_cams,
        "progress",
        lambda v: cam.compute_cams(MODEL, X, ["0"], progress=v),
        lambda: {"int": 3, "str": "bar", "list": [print]},
    ),
    Case(
        cam.compute_cams,
        "class",
        lambda v: cam.compute_cams(MODEL, X, ["0"], class_idx=v),
        lambda: {
            "float": 1.5,
            "str": "1",
            "too large": 10,
            "negative": -1,
            "two for one image": [1, 2],
            "array": np.array([[1]]),
        },
    ),
    Case(
        cam.register_method,
        "family",
        lambda v: cam.register_method("x", label="x", paper="x", family=v, cost="x"),
        lambda: {"None": None, "unknown": "gradients", "list": ["gradient"]},
    ),
    Case(
        cam.shared_scale_maps,
        "result",
        cam.shared_scale_maps,
        lambda: {"None": None, "dict": dict(_result().maps), "str": "result"},
    ),
    Case(
        cam.layer_magnitudes,
        "result",
        cam.layer_magnitudes,
        lambda: {"None": None, "dict": dict(_result().raw), "str": "result"},
    ),
    # layers
    Case(layers.list_candidate_layers, "model", lambda v: layers.list_candidate_layers(v, (8, 8)), bad_models),
    Case(layers.list_candidate_layers, "input_size", lambda v: layers.list_candidate_layers(MODEL, v), bad_sizes),
    Case(
        layers.list_candidate_layers,
        "channels",
        lambda v: layers.list_candidate_layers(MODEL, (8, 8), channels=v),
        bad_ints,
    ),
    Case(
        layers.default_layer,
        "candidates",
        layers.default_layer,
        lambda: {"None": None, "names": ["0"], "one LayerInfo": INFO, "str": "0"},
    ),
    Case(
        layers.default_layer,
        "preferred",
        lambda v: layers.default_layer([INFO], v),
        lambda: {"None": None, "str": "0", "ints": (0,)},
    ),
    # layouts
    Case(
        layouts.grid_fits,
        "height",
        lambda v: layouts.grid_fits(v, 8, (32, 32)),
        lambda: {"None": None, "float": 7.5, "str": "7", "bool": True},
    ),
    Case(
        layouts.grid_fits,
        "width",
        lambda v: layouts.grid_fits(8, v, (32, 32)),
        lambda: {"None": None, "float": 7.5, "str": "7", "bool": True},
    ),
    Case(layouts.grid_fits, "input_size", lambda v: layouts.grid_fits(8, 8, v), bad_sizes),
    # the three layout readers take (shape, input_size) alike
    *(
        case
        for read in (layouts.infer_layout, layouts.layout_readings, layouts.confirm_layout)
        for case in (
            Case(read, "shape", lambda v, read=read: read(v, (32, 32)), bad_shapes),
            Case(read, "input_size", lambda v, read=read: read((1, 4, 8, 8), v), bad_sizes),
        )
    ),
    Case(layouts.require_batch, "shape", lambda v: layouts.require_batch("0", v, 1), bad_shapes),
    Case(layers.layer_layout, "model", lambda v: layers.layer_layout(v, "0", (1, 4, 8, 8), (8, 8)), bad_models),
    Case(
        layers.layer_layout,
        "name",
        lambda v: layers.layer_layout(MODEL, v, (1, 4, 8, 8), (8, 8)),
        lambda: {"None": None, "int": 0, "list": ["0"]},
    ),
    Case(
        layers.layer_layout,
        "shape",
        lambda v: layers.layer_layout(MODEL, "0", v, (8, 8)),
        bad_shapes,
    ),
    Case(layers.layer_layout, "input_size", lambda v: layers.layer_layout(MODEL, "0", (1, 4, 8, 8), v), bad_sizes),
    Case(layers.probe_layouts, "model", lambda v: layers.probe_layouts(v, (8, 8)), bad_models),
    Case(layers.probe_layouts, "input_size", lambda v: layers.probe_layouts(MODEL, v), bad_sizes),
    Case(layers.probe_layouts, "channels", lambda v: layers.probe_layouts(MODEL, (8, 8), channels=v), bad_ints),
    Case(
        layers.probe_layouts,
        "names",
        lambda v: layers.probe_layouts(MODEL, (8, 8), names=v),
        lambda: {"str": "0", "int": 0, "list of ints": [0]},
    ),
    Case(
        checkpoints.read_checkpoint,
        "data",
        checkpoints.read_checkpoint,
        lambda: {"None": None, "str": "weights", "int": 5, "list": [1, 2], "tensor": torch.zeros(2)},
    ),
    Case(
        checkpoints.read_checkpoint,
        "max_bytes",
        lambda v: checkpoints.read_checkpoint(b"x" * 32, max_bytes=v),
        bad_ints,
    ),
    Case(
        layouts.layout_from_spec,
        "layout",
        lambda v: layouts.layout_from_spec(v, (1, 4, 8, 8), (32, 32)),
        lambda: {"None": None, "int": 4, "unknown": "chw", "tokens without K": "tokens"},
    ),
    Case(
        layouts.layout_from_spec,
        "shape",
        lambda v: layouts.layout_from_spec("nchw", v, (32, 32)),
        lambda: {"None": None, "str": "1x4x8x8", "floats": (1, 4.5, 8, 8), "3-D": (1, 4, 8)},
    ),
    Case(
        layouts.layout_from_spec, "input_size", lambda v: layouts.layout_from_spec("tokens:1", (1, 17, 8), v), bad_sizes
    ),
    Case(
        layouts.to_feature_map,
        "tensor",
        lambda v: layouts.to_feature_map(v, LAYOUT),
        lambda: {
            "None": None,
            "numpy": np.zeros((1, 4, 8, 8), np.float32),
            "3-D": torch.zeros(1, 4, 64),
            "other shape": torch.zeros(1, 5, 8, 8),
            "int": torch.zeros(1, 4, 8, 8, dtype=torch.long),
        },
    ),
    Case(
        layouts.to_feature_map,
        "layout",
        lambda v: layouts.to_feature_map(torch.zeros(1, 4, 8, 8), v),
        lambda: {"None": None, "str": "nchw"},
    ),
    # models (registry, weights, checkpoints)
    Case(
        models.get_spec,
        "model",
        models.get_spec,
        lambda: {"None": None, "int": 3, "list": ["resnet18"], "unknown": "resnet9000"},
    ),
    Case(models.class_names_for, "spec", models.class_names_for, bad_specs),
    Case(models.build_architecture, "spec", models.build_architecture, bad_specs),
    Case(models.torchvision_cache_path, "spec", models.torchvision_cache_path, bad_specs),
    Case(
        models.download_file,
        "url",
        lambda v: models.download_file(v, Path("/nonexistent/x.pth")),
        lambda: {"None": None, "int": 3, "no scheme": "example.org/x.pth", "file scheme": "file:///etc/passwd"},
    ),
    Case(
        models.download_file,
        "destination",
        lambda v: models.download_file("https://example.org/x.pth", v),
        lambda: {"None": None, "int": 3},
    ),
    Case(
        models.download_file,
        "timeout_s",
        lambda v: models.download_file("https://example.org/x.pth", Path("/nonexistent/x.pth"), timeout_s=v),
        lambda: {"None": None, "zero": 0, "negative": -1.0, "NaN": float("nan"), "str": "30"},
    ),
    Case(
        models.download_file,
        "max_bytes",
        lambda v: models.download_file("https://example.org/x.pth", Path("/nonexistent/x.pth"), max_bytes=v),
        lambda: {k: v for k, v in bad_ints(0).items() if k != "None"},
    ),
    Case(
        models.download_allowance,
        "folder",
        models.download_allowance,
        lambda: {"None": None, "str": "/tmp", "int": 3},
    ),
    Case(models.load_model, "model", models.load_model, lambda: {"None": None, "int": 3, "list": ["resnet18"]}),
    Case(
        models.load_model,
        "device",
        lambda v: models.load_model("cifar10_resnet20", device=v),
        lambda: {"int": 3, "meta": torch.device("meta"), "str": "quantum"},
    ),
    Case(
        models.read_checkpoint,
        "checkpoint",
        models.read_checkpoint,
        lambda: {"None": None, "str": "weights", "list": [1, 2], "array": np.zeros(4, np.uint8), "empty": b""},
    ),
    Case(
        models.read_checkpoint,
        "filename",
        lambda v: models.read_checkpoint(b"not a checkpoint", v),
        lambda: {"None": None, "int": 3, "bytes": b"x.pt"},
    ),
    Case(
        models.load_state_strict,
        "model",
        lambda v: models.load_state_strict(v, MODEL.state_dict(), "tiny"),
        lambda: {"None": None, "state dict": MODEL.state_dict(), "meta weights": META_MODEL},
    ),
    Case(
        models.load_state_strict,
        "checkpoint",
        lambda v: models.load_state_strict(_tiny_model(), v, "tiny"),
        lambda: {"None": None, "list": list(MODEL.state_dict().values()), "str": "state", "empty": {}},
    ),
    Case(
        models.load_checkpoint,
        "model",
        lambda v: models.load_checkpoint(v, b"x"),
        lambda: {"None": None, "int": 3, "unknown": "resnet9000"},
    ),
    Case(
        models.load_checkpoint,
        "checkpoint",
        lambda v: models.load_checkpoint("cifar10_resnet20", v),
        lambda: {"None": None, "str": "weights", "empty": b""},
    ),
    # models (preprocessing; rewritten by another helper, rows owned here)
    Case(models.prepare_input, "image", lambda v: models.prepare_input(v, PRE), bad_images),
    Case(
        models.prepare_input,
        "preprocessing",
        lambda v: models.prepare_input(IMAGE, v),
        lambda: {"None": None, "dict": {"resize": 8, "crop": 8}, "spec": SPEC},
    ),
    Case(models.prepare_batch, "images", lambda v: models.prepare_batch(v, PRE), bad_batches),
    Case(
        models.prepare_batch,
        "preprocessing",
        lambda v: models.prepare_batch(IMAGES, v),
        lambda: {"None": None, "dict": {"resize": 8, "crop": 8}},
    ),
    # checkpoints
    Case(
        checkpoints.state_differences,
        "state",
        lambda v: checkpoints.state_differences(v, MODEL.state_dict()),
        lambda: {"None": None, "list": [1], "non-tensor values": {"0.weight": [1.0]}},
    ),
    Case(
        checkpoints.state_differences,
        "expected",
        lambda v: checkpoints.state_differences(MODEL.state_dict(), v),
        lambda: {"None": None, "list": [1], "non-tensor values": {"0.weight": "w"}},
    ),
    Case(
        checkpoints.find_reading,
        "checkpoint",
        lambda v: checkpoints.find_reading(v, MODEL.state_dict(), "tiny"),
        lambda: {"None": None, "list": [1], "str": "weights"},
    ),
    Case(
        checkpoints.find_reading,
        "expected",
        lambda v: checkpoints.find_reading(MODEL.state_dict(), v, "tiny"),
        lambda: {"None": None, "list": [1], "module": MODEL},
    ),
    # imaging (rewritten by another helper, rows owned here)
    Case(
        imaging.decode_image,
        "data",
        imaging.decode_image,
        lambda: {"None": None, "str": "image.png", "list": [137, 80], "array": np.zeros(8, np.uint8), "empty": b""},
    ),
    Case(imaging.decode_image, "max_bytes", lambda v: imaging.decode_image(b"x", max_bytes=v), bad_ints),
    Case(
        imaging.ensure_rgb_uint8,
        "image",
        imaging.ensure_rgb_uint8,
        lambda: {k: v for k, v in bad_images().items() if k not in ("batch",)},
    ),
    Case(imaging.ensure_rgb_batch, "images", imaging.ensure_rgb_batch, bad_batches),
    # drawing
    Case(drawing.png_bytes, "image", drawing.png_bytes, bad_images),
    Case(
        drawing.npy_bytes,
        "array",
        drawing.npy_bytes,
        lambda: {"None": None, "list": [1, 2], "object": np.array([None, 1]), "str": np.array(["a"])},
    ),
    Case(drawing.fast_png, "image", drawing.fast_png, bad_images),
    Case(drawing.fast_jpeg, "image", drawing.fast_jpeg, bad_images),
    Case(drawing.fast_jpeg, "quality", lambda v: drawing.fast_jpeg(IMAGES[0], quality=v), lambda: bad_ints(1)),
    Case(drawing.upscale_tiles, "tiles", lambda v: drawing.upscale_tiles(v, 16), bad_batches),
    Case(drawing.upscale_tiles, "min_side", lambda v: drawing.upscale_tiles(IMAGES, v), lambda: bad_ints(0)),
    Case(drawing.label_tiles, "tiles", lambda v: drawing.label_tiles(v, ["a", "b"]), bad_batches),
    Case(
        drawing.label_tiles,
        "labels",
        lambda v: drawing.label_tiles(IMAGES, v),
        lambda: {"None": None, "str": "ab", "too few": ["a"], "ints": [1, 2]},
    ),
    Case(
        drawing.label_tiles,
        "flagged",
        lambda v: drawing.label_tiles(IMAGES, ["a", "b"], flagged=v),
        lambda: {"str": "ab", "too few": [True], "ints": [1, 0]},
    ),
    Case(drawing.grid_png, "tiles", lambda v: drawing.grid_png(v, 1, 2, min_tile_px=8), bad_batches),
    Case(drawing.grid_png, "min_tile_px", lambda v: drawing.grid_png(IMAGES, 1, 2, min_tile_px=v), lambda: bad_ints(0)),
    Case(drawing.grid_png, "rows", lambda v: drawing.grid_png(IMAGES, v, 2, min_tile_px=8), bad_ints),
    # overlay
    Case(overlay.colorize, "cam", overlay.colorize, bad_maps),
    Case(
        overlay.colorize,
        "colormap",
        lambda v: overlay.colorize(CAM, v),
        lambda: {"None": None, "unknown": "rainbow", "list": ["jet"], "int": 2},
    ),
    Case(
        overlay.signed_map,
        "raw",
        lambda v: overlay.signed_map(v, (4, 4)),
        lambda: {
            "None": None,
            "list": [[0.5, -0.5]],
            "tensor": torch.zeros(2, 2),
            "uint8": np.zeros((2, 2), np.uint8),
            "3-D": np.zeros((2, 2, 2), np.float32),
            "empty": np.zeros((0, 2), np.float32),
            "NaN": np.full((2, 2), np.nan, np.float32),
            "inf": np.full((2, 2), np.inf, np.float32),
        },
    ),
    Case(overlay.signed_map, "shape", lambda v: overlay.signed_map(CAM, v), bad_sizes),
    Case(overlay.resize_map, "cam", lambda v: overlay.resize_map(v, (4, 4)), bad_maps),
    Case(overlay.resize_map, "size", lambda v: overlay.resize_map(CAM, v), bad_sizes),
    Case(overlay.overlay_heatmap, "image", lambda v: overlay.overlay_heatmap(v, CAM), bad_images),
    Case(overlay.overlay_heatmap, "cam", lambda v: overlay.overlay_heatmap(IMAGE, v), bad_maps),
    Case(
        overlay.overlay_heatmap,
        "alpha",
        lambda v: overlay.overlay_heatmap(IMAGE, CAM, alpha=v),
        lambda: {"None": None, "NaN": float("nan"), "above 1": 1.5, "negative": -0.1, "str": "0.5"},
    ),
    Case(
        overlay.overlay_heatmap,
        "threshold",
        lambda v: overlay.overlay_heatmap(IMAGE, CAM, threshold=v),
        lambda: {"NaN": float("nan"), "str": "0.5", "list": [0.5]},
    ),
    Case(
        overlay.overlay_heatmap,
        "mask",
        lambda v: overlay.overlay_heatmap(IMAGE, CAM, mask=v),
        lambda: {"uint8": np.ones((8, 8), np.uint8), "other shape": np.ones((4, 4), bool), "list": [[True]]},
    ),
    Case(
        overlay.overlay_heatmap,
        "colormap",
        lambda v: overlay.overlay_heatmap(IMAGE, CAM, colormap=v),
        lambda: {"None": None, "unknown": "rainbow"},
    ),
    Case(
        overlay.overlay_like_pytorch_grad_cam,
        "image",
        lambda v: overlay.overlay_like_pytorch_grad_cam(v, CAM),
        bad_images,
    ),
    Case(
        overlay.overlay_like_pytorch_grad_cam,
        "cam",
        lambda v: overlay.overlay_like_pytorch_grad_cam(IMAGE, v),
        lambda: {**bad_maps(), "other size": np.full((4, 4), 0.5, np.float32)},
    ),
    Case(
        overlay.overlay_like_pytorch_grad_cam,
        "image_weight",
        lambda v: overlay.overlay_like_pytorch_grad_cam(IMAGE, CAM, image_weight=v),
        lambda: {"None": None, "NaN": float("nan"), "above 1": 1.5, "negative": -0.1},
    ),
    Case(
        overlay.upscale_nearest,
        "image",
        lambda v: overlay.upscale_nearest(v, 16),
        lambda: {k: v for k, v in bad_images().items() if k not in ("float64", "float32 0-1", "int64", "batch")},
    ),
    Case(overlay.upscale_nearest, "min_side", lambda v: overlay.upscale_nearest(IMAGE, v), lambda: bad_ints(0)),
    Case(overlay.nearest_factor, "min_side", lambda v: overlay.nearest_factor((8, 8), v), lambda: bad_ints(0)),
    Case(overlay.map_to_original, "cam", lambda v: overlay.map_to_original(v, (8, 8), (0, 0, 8, 8)), bad_maps),
    Case(overlay.map_to_original, "original_shape", lambda v: overlay.map_to_original(CAM, v, (0, 0, 8, 8)), bad_sizes),
    Case(
        overlay.map_to_original,
        "crop_box",
        lambda v: overlay.map_to_original(CAM, (8, 8), v),
        lambda: {
            "None": None,
            "three": (0, 0, 8),
            "NaN": (0, 0, float("nan"), 8),
            "str": "0,0,8,8",
            "reversed": (8, 8, 0, 0),
        },
    ),
    # samples
    Case(
        samples.load_sample,
        "sample",
        samples.load_sample,
        lambda: {"None": None, "int": 3, "list": ["astronaut"], "unknown": "dog"},
    ),
    # augment
    Case(
        augment.get_transform_spec,
        "transform",
        augment.get_transform_spec,
        lambda: {"None": None, "list": ["HorizontalFlip"], "unknown": "Flip9000"},
    ),
    Case(
        augment.validate_step,
        "step",
        augment.validate_step,
        lambda: {"None": None, "dict": {"transform": "HorizontalFlip"}, "str": "HorizontalFlip"},
    ),
    Case(
        augment.validate_step,
        "index",
        lambda v: augment.validate_step(augment.PipelineStep("HorizontalFlip"), v),
        lambda: {"None": None, "str": "0", "negative": -1, "float": 0.5},
    ),
    Case(augment.build_pipeline, "pipeline", augment.build_pipeline, bad_pipelines),
    Case(
        augment.pick_images,
        "pool",
        lambda v: augment.pick_images(v, 2, 0),
        lambda: {"None": None, "floats": [0.5, 1.5], "2-D": [[0, 1]], "negative": [-1, 2], "str": "01", "empty": []},
    ),
    Case(augment.pick_images, "count", lambda v: augment.pick_images([0, 1, 2], v, 0), bad_ints),
    Case(
        augment.pick_images,
        "seed",
        lambda v: augment.pick_images([0, 1, 2], 2, v),
        lambda: {"None": None, "negative": -1, "float": 0.5, "str": "0"},
    ),
    Case(
        augment.augment_grid,
        "image",
        lambda v: augment.augment_grid(v, PIPELINE, rows=1, cols=2),
        lambda: {
            **{k: v for k, v in bad_images().items() if k != "batch"},
            "nchw": np.zeros((2, 3, 8, 8), np.uint8),
            "float batch": IMAGES.astype(float),
        },
    ),
    Case(augment.augment_grid, "pipeline", lambda v: augment.augment_grid(IMAGES, v, rows=1, cols=2), bad_pipelines),
    Case(
        augment.augment_grid,
        "index",
        lambda v: augment.augment_grid(IMAGES, PIPELINE, rows=1, cols=2, indices=v),
        lambda: {"out of range": [0, 2], "negative": [0, -1], "float": [0.5, 1], "str": "01"},
    ),
    Case(
        augment.augment_grid,
        "seed",
        lambda v: augment.augment_grid(IMAGES, PIPELINE, rows=1, cols=2, seed=v),
        lambda: {"negative": -1, "float": 0.5, "str": "0"},
    ),
    Case(
        augment.tile_grid,
        "tiles",
        lambda v: augment.tile_grid(v, 1, 2),
        lambda: {k: v for k, v in bad_batches().items() if k != "no images"},
    ),
    Case(augment.tile_grid, "rows", lambda v: augment.tile_grid(IMAGES, v, 2), bad_ints),
    Case(augment.tile_grid, "cols", lambda v: augment.tile_grid(IMAGES, 1, v), bad_ints),
    *(
        Case(getattr(augment, name), "pipeline", getattr(augment, name), bad_pipelines)
        for name in ("pipeline_to_dict", "pipeline_to_json", "pipeline_to_yaml", "pipeline_to_python")
    ),
    Case(
        augment.pipeline_from_dict,
        "export",
        augment.pipeline_from_dict,
        lambda: {"None": None, "list": [], "str": "{}", "empty": {}},
    ),
    Case(
        augment.pipeline_from_json,
        "JSON",
        augment.pipeline_from_json,
        lambda: {**bad_texts(), "not JSON": "{", "empty": ""},
    ),
    Case(
        augment.pipeline_from_yaml, "YAML", augment.pipeline_from_yaml, lambda: {**bad_texts(), "not YAML": "["}
    ),  # an empty YAML document is None: pipeline_from_dict's row
    Case(
        augment.compose_to_dict,
        "compose",
        augment.compose_to_dict,
        lambda: {
            "None": None,
            "pipeline": PIPELINE,
            "list": [augment.build_pipeline(PIPELINE)],
            "one transform": augment.build_pipeline(PIPELINE).transforms[0],
        },
    ),
    Case(augment.reference_keys, "compose", augment.reference_keys, lambda: {"None": None, "pipeline": PIPELINE}),
    Case(augment.output_bounds, "compose", lambda v: augment.output_bounds(v, 8, 8), lambda: {"pipeline": PIPELINE}),
    Case(
        augment.output_bounds,
        "height",
        lambda v: augment.output_bounds(augment.build_pipeline(PIPELINE), v, 8),
        lambda: {"zero": 0, "float": 1.5, "str": "8", "bool": True},
    ),
    Case(augment.check_output_sizes, "compose", lambda v: augment.check_output_sizes(v, 8, 8), lambda: {"None": None}),
    Case(augment.estimate_grid, "pipeline", lambda v: augment.estimate_grid(v, 8, 8, 1), bad_pipelines),
    Case(
        augment.estimate_grid,
        "tiles",
        lambda v: augment.estimate_grid(PIPELINE, 8, 8, v),
        lambda: {"zero": 0, "float": 1.5, "bool": True},
    ),
    Case(augment.step_seconds, "step", lambda v: augment.step_seconds(v, 64), lambda: {"None": None, "str": "Blur"}),
    Case(
        augment.step_seconds,
        "pixels",
        lambda v: augment.step_seconds(augment.PipelineStep("Blur"), v),
        lambda: {"zero": 0, "float": 1.5},
    ),
    Case(augment.pipeline_to_query, "pipeline", augment.pipeline_to_query, bad_pipelines),
    Case(
        augment.pipeline_from_query,
        "JSON",
        lambda v: augment.pipeline_from_query(v, 0),
        lambda: {**bad_texts(), "not JSON": "[", "empty": "", "too long": " " * (augment.MAX_IMPORT_CHARS + 1)},
    ),
    Case(
        augment.pipeline_from_query,
        "link",
        lambda v: augment.pipeline_from_query(v, 0),
        lambda: {
            "object": "{}",
            "number": "3",
            "too many steps": json.dumps([["HorizontalFlip", {}, 1.0, True]] * (augment.MAX_STEPS + 1)),
            "step not a list": "[1]",
            "three fields": '[["HorizontalFlip", {}, 1.0]]',
            "params not an object": '[["HorizontalFlip", [], 1.0, true]]',
        },
    ),
    Case(
        augment.pipeline_from_query,
        "seed",
        lambda v: augment.pipeline_from_query("[]", v),
        lambda: {"None": None, "negative": -1, "float": 0.5, "str": "0", "bool": True, "too large": 2**32},
    ),
    Case(
        augment.augment_image,
        "compose",
        lambda v: augment.augment_image(v, IMAGE),
        lambda: {"None": None, "pipeline": PIPELINE, "function": lambda image: {"image": image}},
    ),
    Case(
        augment.augment_image,
        "image",
        lambda v: augment.augment_image(augment.build_pipeline(PIPELINE), v),
        bad_images,
    ),
    Case(
        augment.augment_image,
        "references",
        lambda v: augment.augment_image(augment.build_pipeline(MATCHING), IMAGE, references=v),
        lambda: {
            "None": None,
            "one image": IMAGE,
            "str": "a.png",
            "float images": [IMAGE.astype(np.float32)],
            "gray list": [IMAGE[..., 0]],
            "float batch": IMAGES.astype(np.float64),
            "int": 3,
        },
    ),
    Case(
        augment.pick_references,
        "images",
        lambda v: augment.pick_references(v, 0, 0),
        lambda: {**bad_batches(), "empty list": [], "float list": [IMAGE.astype(float)], "names": ["a.png", "b.png"]},
    ),
    Case(
        augment.pick_references,
        "own",
        lambda v: augment.pick_references(IMAGES, v, 0),
        lambda: {"float": 0.5, "str": "0", "bool": True, "negative": -1, "out of range": 2},
    ),
    Case(
        augment.pick_references,
        "seed",
        lambda v: augment.pick_references(IMAGES, 0, v),
        lambda: {"None": None, "negative": -1, "float": 0.5, "str": "0"},
    ),
    *(
        Case(
            function,
            "references",
            lambda v, f=call: f(v),
            lambda: {
                "empty list": [],
                "no images": np.zeros((0, 8, 8, 3), np.uint8),
                "one image array": IMAGE,
                "float batch": IMAGES.astype(np.float64),
                "float list": [IMAGE.astype(np.float64)],
                "str": "a.png",
                "int": 3,
            },
        )
        for function, call in (
            (augment.augment_grid, lambda v: augment.augment_grid(IMAGES, MATCHING, rows=1, cols=2, references=v)),
            (augment.trace_tile, lambda v: augment.trace_tile(IMAGES, MATCHING, _grid(MATCHING), 0, references=v)),
        )
    ),
    Case(
        augment.trace_tile,
        "image",
        lambda v: augment.trace_tile(v, PIPELINE, _grid(), 0),
        lambda: {
            **{k: v for k, v in bad_images().items() if k != "batch"},
            "nchw": np.zeros((2, 3, 8, 8), np.uint8),
            "float batch": IMAGES.astype(float),
            "fewer than the grid": IMAGES[:1],
        },
    ),
    Case(augment.trace_tile, "pipeline", lambda v: augment.trace_tile(IMAGES, v, _grid(), 0), bad_pipelines),
    Case(
        augment.trace_tile,
        "grid",
        lambda v: augment.trace_tile(IMAGES, PIPELINE, v, 0),
        lambda: {"None": None, "dict": {"indices": (0, 1), "seed": 0}, "tiles": _grid().tiles},
    ),
    Case(
        augment.trace_tile,
        "tile",
        lambda v: augment.trace_tile(IMAGES, PIPELINE, _grid(), v),
        lambda: {"None": None, "float": 0.5, "str": "0", "bool": True, "negative": -1, "out of range": 2},
    ),
    # cifar
    Case(cifar.detect_source, "root", cifar.detect_source, lambda: {"None": None, "int": 3, "list": ["."]}),
    Case(cifar.balanced_subset, "labels", lambda v: cifar.balanced_subset(v, 1), bad_labels),
    Case(
        cifar.balanced_subset,
        "limit",
        lambda v: cifar.balanced_subset(np.arange(4), v),
        lambda: {"float": 1.5, "str": "2", "bool": True, "negative": -1},
    ),
    Case(
        cifar.load_cifar10,
        "split",
        lambda v: cifar.load_cifar10(split=v),
        lambda: {"None": None, "unknown": "validation", "int": 0},
    ),
    Case(
        cifar.load_cifar10,
        "limit",
        lambda v: cifar.load_cifar10(split="test", limit=v),
        lambda: {"float": 1.5, "str": "2", "bool": True, "negative": -1, "zero": 0},
    ),
    Case(cifar.load_cifar10, "root", lambda v: cifar.load_cifar10(v), lambda: {"int": 3, "list": ["."]}),
    Case(cifar.download_cifar10, "root", cifar.download_cifar10, lambda: {"None": None, "int": 3, "list": ["."]}),
    Case(
        cifar.download_cifar10,
        "timeout",
        lambda v: cifar.download_cifar10("/nonexistent/cifar", timeout=v),
        lambda: {"None": None, "zero": 0, "negative": -1.0, "NaN": float("nan"), "str": "30"},
    ),
    # cifar_models
    Case(
        cifar_models.build_cifar_model,
        "arch",
        cifar_models.build_cifar_model,
        lambda: {"None": None, "list": ["resnet20"], "unknown": "resnet9000"},
    ),
    Case(
        cifar_models.build_cifar_model,
        "num_classes",
        lambda v: cifar_models.build_cifar_model(next(iter(cifar_models.CIFAR_ARCHS)), v),
        bad_ints,
    ),
    Case(
        cifar_models.normalize_batch,
        "images",
        cifar_models.normalize_batch,
        lambda: {
            "None": None,
            "numpy": IMAGES,
            "float": torch.zeros(2, 8, 8, 3),
            "nchw": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            "3-D": torch.zeros(8, 8, 3, dtype=torch.uint8),
            "empty": torch.zeros(0, 8, 8, 3, dtype=torch.uint8),
            "meta": torch.zeros(2, 8, 8, 3, dtype=torch.uint8, device="meta"),
        },
    ),
    # evaluation
    Case(
        evaluation.predict_probabilities,
        "images",
        lambda v: evaluation.predict_probabilities(MODEL, v, PRE),
        lambda: {k: v for k, v in bad_batches().items() if k != "no images"},
    ),
    Case(
        evaluation.predict_probabilities,
        "model",
        lambda v: evaluation.predict_probabilities(v, IMAGES, PRE),
        bad_models,
    ),
    Case(
        evaluation.predict_probabilities,
        "preprocessing",
        lambda v: evaluation.predict_probabilities(MODEL, IMAGES, v),
        lambda: {"None": None, "dict": {"crop": 8}},
    ),
    Case(
        evaluation.predict_probabilities,
        "batch_size",
        lambda v: evaluation.predict_probabilities(MODEL, IMAGES, PRE, batch_size=v),
        bad_ints,
    ),
    Case(
        evaluation.predict_probabilities,
        "progress",
        lambda v: evaluation.predict_probabilities(MODEL, IMAGES, PRE, progress=v),
        lambda: {"int": 3, "str": "bar", "list": [print]},
    ),
    Case(
        evaluation.confusion_matrix,
        "labels",
        lambda v: evaluation.confusion_matrix(v, np.array([0, 1]), 10),
        bad_labels,
    ),
    Case(
        evaluation.confusion_matrix,
        "predictions",
        lambda v: evaluation.confusion_matrix(np.array([0, 1]), v, 10),
        bad_labels,
    ),
    Case(
        evaluation.confusion_matrix,
        "num_classes",
        lambda v: evaluation.confusion_matrix(np.array([0, 1]), np.array([0, 1]), v),
        bad_ints,
    ),
    Case(
        evaluation.per_class_accuracy,
        "matrix",
        evaluation.per_class_accuracy,
        lambda: {
            "None": None,
            "list": [[1, 0], [0, 1]],
            "1-D": np.arange(3),
            "not square": np.zeros((2, 3), int),
            "negative": -np.eye(2, dtype=np.int64),
            "float": np.eye(2) / 2,
            "empty": np.zeros((0, 0), int),
        },
    ),
    Case(
        evaluation.flip_report, "original_probabilities", lambda v: evaluation.flip_report(v, PROBS), bad_probabilities
    ),
    Case(
        evaluation.flip_report, "augmented_probabilities", lambda v: evaluation.flip_report(PROBS, v), bad_probabilities
    ),
    # prediction_cache (the bad value is refused before any file is read or written)
    Case(
        prediction_cache.cached_predictions,
        "images",
        lambda v: prediction_cache.cached_predictions(MODEL, PRE, v, data_key="x", cache_dir="c"),
        bad_batches,
    ),
    Case(
        prediction_cache.cached_predictions,
        "model",
        lambda v: prediction_cache.cached_predictions(v, PRE, IMAGES, data_key="x", cache_dir="c"),
        bad_models,
    ),
    Case(
        prediction_cache.cached_predictions,
        "preprocessing",
        lambda v: prediction_cache.cached_predictions(MODEL, v, IMAGES, data_key="x", cache_dir="c"),
        lambda: {"None": None, "dict": {"crop": 8}, "spec": SPEC},
    ),
    Case(
        prediction_cache.cached_predictions,
        "data_key",
        lambda v: prediction_cache.cached_predictions(MODEL, PRE, IMAGES, data_key=v, cache_dir="c"),
        lambda: {"None": None, "int": 3, "bytes": b"cifar10 test", "tuple": ("cifar10", "test")},
    ),
    Case(
        prediction_cache.cached_predictions,
        "cache_dir",
        lambda v: prediction_cache.cached_predictions(MODEL, PRE, IMAGES, data_key="x", cache_dir=v),
        lambda: {"int": 3, "bytes": b"c", "list": ["c"]},
    ),
    Case(
        prediction_cache.cached_predictions,
        "progress",
        lambda v: prediction_cache.cached_predictions(MODEL, PRE, IMAGES, data_key="x", cache_dir="c", progress=v),
        lambda: {"int": 3, "str": "bar", "list": [print]},
    ),
    Case(
        prediction_cache.cached_predictions,
        "batch_size",
        lambda v: prediction_cache.cached_predictions(MODEL, PRE, IMAGES, data_key="x", cache_dir="c", batch_size=v),
        bad_ints,
    ),
    Case(
        prediction_cache.cached_predictions,
        "max_files",
        lambda v: prediction_cache.cached_predictions(MODEL, PRE, IMAGES, data_key="x", cache_dir="c", max_files=v),
        bad_ints,
    ),
    Case(prediction_cache.weights_digest, "model", prediction_cache.weights_digest, bad_models),
    # train
    Case(
        train.load_pipeline,
        "pipeline",
        train.load_pipeline,
        lambda: {"int": 3, "list": ["p.json"], "missing": "/nonexistent/p.json"},
    ),
    Case(
        train.augment_epoch,
        "images",
        lambda v: train.augment_epoch(v, np.array([0, 1]), PIPELINE, 0),
        lambda: {k: v for k, v in bad_batches().items() if k != "no images"},
    ),
    Case(
        train.augment_epoch,
        "order",
        lambda v: train.augment_epoch(IMAGES, v, PIPELINE, 0),
        lambda: {**bad_labels(), "out of range": np.array([0, 2]), "negative": np.array([-1])},
    ),
    Case(train.augment_epoch, "pipeline", lambda v: train.augment_epoch(IMAGES, np.array([0]), v, 0), bad_pipelines),
    Case(
        train.augment_epoch,
        "seed",
        lambda v: train.augment_epoch(IMAGES, np.array([0]), PIPELINE, v),
        lambda: {"None": None, "negative": -1, "float": 0.5, "str": "0"},
    ),
    Case(
        train.train_step,
        "images",
        lambda v: train.train_step(
            _tiny_model(), torch.optim.SGD(MODEL.parameters(), 0.0), v, torch.zeros(2, dtype=torch.long), 0.1
        ),
        lambda: {
            "None": None,
            "numpy": IMAGES,
            "float": torch.zeros(2, 8, 8, 3),
            "nchw": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            "meta": torch.zeros(2, 8, 8, 3, dtype=torch.uint8, device="meta"),
        },
    ),
    Case(
        train.train_step,
        "labels",
        lambda v: train.train_step(
            _tiny_model(), torch.optim.SGD(MODEL.parameters(), 0.0), torch.zeros(2, 8, 8, 3, dtype=torch.uint8), v, 0.1
        ),
        lambda: {
            "None": None,
            "numpy": np.zeros(2, np.int64),
            "float": torch.zeros(2),
            "wrong length": torch.zeros(3, dtype=torch.long),
            "out of range": torch.tensor([0, 10]),
            "meta": torch.zeros(2, dtype=torch.long, device="meta"),
        },
    ),
    Case(
        train.train_step,
        "label_smoothing",
        lambda v: train.train_step(
            _tiny_model(),
            torch.optim.SGD(MODEL.parameters(), 0.0),
            torch.zeros(2, 8, 8, 3, dtype=torch.uint8),
            torch.zeros(2, dtype=torch.long),
            v,
        ),
        lambda: {"None": None, "negative": -0.1, "above 1": 1.5, "NaN": float("nan")},
    ),
    Case(
        train.train_step,
        "model",
        lambda v: train.train_step(
            v,
            torch.optim.SGD(MODEL.parameters(), 0.0),
            torch.zeros(2, 8, 8, 3, dtype=torch.uint8),
            torch.zeros(2, dtype=torch.long),
            0.1,
        ),
        bad_models,
    ),
    Case(
        train.evaluate,
        "data",
        lambda v: train.evaluate(MODEL, v, torch.device("cpu")),
        lambda: {"None": None, "array": IMAGES, "tuple": (IMAGES, np.zeros(2))},
    ),
    Case(
        train.evaluate,
        "device",
        lambda v: train.evaluate(MODEL, DATA, v),
        lambda: {"None": None, "meta": torch.device("meta"), "int": 3},
    ),
    Case(train.evaluate, "batch_size", lambda v: train.evaluate(MODEL, DATA, torch.device("cpu"), v), bad_ints),
    Case(train.evaluate, "model", lambda v: train.evaluate(v, DATA, torch.device("cpu")), bad_models),
    Case(train.train, "config", train.train, lambda: {"None": None, "dict": {"arch": "resnet20"}, "argv": ["x"]}),
    # batch
    Case(batch.run_batch, "config", batch.run_batch, lambda: {"None": None, "dict": {"out": "x"}, "argv": ["x"]}),
    Case(batch.read_batch_table, "out", batch.read_batch_table, lambda: {"None": None, "int": 3, "empty": "nothing"}),
    Case(batch.read_run_record, "out", batch.read_run_record, lambda: {"None": None, "int": 3, "empty": "nothing"}),
    Case(
        batch.read_batch_map,
        "out",
        lambda v: batch.read_batch_map(v, "maps/m.npy", 0),
        lambda: {"None": None, "int": 3},
    ),
    Case(
        batch.read_batch_map,
        "map_path",
        lambda v: batch.read_batch_map(".", v, 0),
        lambda: {"None": None, "int": 3, "absolute": "/etc/passwd", "dot-dot": "../m.npy", "empty": ""},
    ),
    Case(
        batch.read_batch_map,
        "map_index",
        lambda v: batch.read_batch_map(".", "maps/m.npy", v),
        lambda: {"None": None, "bool": True, "str": "0", "float": 1.0},
    ),
    Case(
        batch_files.read_capped, "path", lambda v: batch_files.read_capped(v, 8, "x"), lambda: {"None": None, "int": 3}
    ),
    Case(batch_files.read_capped, "limit", lambda v: batch_files.read_capped("x", v, "x"), bad_ints),
    Case(
        storage.write_durably,
        "path",
        lambda v: storage.write_durably(v, bytes),
        lambda: {"None": None, "NUL": "a\x00b"},
    ),
    Case(storage.write_durably, "write", lambda v: storage.write_durably("x", v), lambda: {"None": None}),
    Case(
        storage.fsync_directory, "directory", storage.fsync_directory, lambda: {"None": None, "int": 3, "NUL": "a\x00"}
    ),
    Case(
        contracts.require_path,
        "path",
        lambda v: contracts.require_path(v, "path"),
        lambda: {"None": None, "bytes": b"x"},
    ),
    Case(batch_files.within, "root", lambda v: batch_files.within(v, "x"), lambda: {"None": None, "NUL": "a\x00"}),
    Case(batch_files.within, "path", lambda v: batch_files.within(".", v), lambda: {"None": None, "int": 3}),
    Case(batch_files.confined, "folder", lambda v: batch_files.confined(v, "x"), lambda: {"None": None, "int": 3}),
    Case(
        batch_files.confined,
        "stored",
        lambda v: batch_files.confined(".", v),
        lambda: {"None": None, "absolute": "/etc/passwd", "dot-dot": "a/../../x", "drive": "C:/x", "empty": ""},
    ),
    Case(
        batch_files.part_problem,
        "cells",
        lambda v: batch_files.part_problem(".", "p.parquet", batch.TABLE_SCHEMA, range(1), v),
        bad_ints,
    ),
    Case(ray_engine.run_ray, "prepared", lambda v: ray_engine.run_ray(v, None), lambda: {"None": None, "dict": {}}),
    # guard
    Case(guard.model_lock, "model", guard.model_lock, lambda: {"None": None, "int": 3, "function": len}),
    Case(
        guard.eval_mode,
        "model",
        lambda v: guard.eval_mode(v).__enter__(),
        lambda: {"None": None, "int": 3, "function": len},
    ),
    Case(
        guard.model_guard,
        "model",
        lambda v: guard.model_guard(v).__enter__(),
        lambda: {"None": None, "int": 3, "function": len},
    ),
    # contracts (the shared checks themselves)
    Case(
        contracts.require_array,
        "image",
        lambda v: contracts.require_array(v, "image", dtypes=(np.uint8,), ndim=3, channels=3),
        bad_images,
    ),
    Case(
        contracts.require_tensor,
        "x",
        lambda v: contracts.require_tensor(v, "x", ndim=4, floating=True),
        lambda: bad_tensors(4),
    ),
    Case(
        contracts.require_unit_range,
        "cam",
        lambda v: contracts.require_unit_range(v, "cam"),
        lambda: {k: v for k, v in bad_maps().items() if k in ("NaN", "Inf", "above 1", "negative")},
    ),
    Case(contracts.require_int, "count", lambda v: contracts.require_int(v, "count", minimum=1), bad_ints),
    Case(contracts.require_size, "size", lambda v: contracts.require_size(v, "size"), bad_sizes),
    Case(contracts.require_model, "model", contracts.require_model, bad_models),
    Case(
        contracts.require_cam_input,
        "x",
        contracts.require_cam_input,
        lambda: {**bad_tensors(4), "channels-last": torch.zeros(1, 8, 8, 3)},
    ),
    Case(
        contracts.require_finite,
        "tensor",
        lambda v: contracts.require_finite("the logits", v),
        lambda: {"None": None, "array": np.zeros(3), "list": [1.0]},
    ),
    Case(
        contracts.resolve_classes,
        "class",
        lambda v: contracts.resolve_classes(v, torch.zeros(2, 3)),
        lambda: {"str": "1", "float": 0.5, "bool": [True, 0], "out of range": 3, "negative": -1, "count": [0]},
    ),
    Case(
        cam.registry.family_decorator,
        "family",
        cam.registry.family_decorator,
        lambda: {"unknown": "colour", "None": None, "int": 1, "list": ["gradient"]},
    ),
    # targets
    Case(
        targets.target_scores,
        "targets",
        lambda v: targets.target_scores(v, torch.zeros(2, 3)),
        lambda: {
            "None": None,
            "str": "01",
            "not callable": [1, 2],
            "count": [targets.ClassTarget(0)],
            "class out of range": [targets.ClassTarget(3)] * 2,
            "negative class": [ClassifierOutputTarget(-1)] * 2,
            "not a scalar": [lambda o: o] * 2,
            "not a tensor": [lambda o: 1.0] * 2,
            "integer score": [lambda o: o.argmax()] * 2,
            "NaN score": [lambda o: o[0] / o[0]] * 2,
        },
    ),
    Case(
        targets.target_scores,
        "output",
        lambda v: targets.target_scores([targets.ClassTarget(0)] * 2, v),
        lambda: {
            "None": None,
            "str": "logits",
            "wrong batch": torch.zeros(3, 3),
            "0-d": torch.tensor(1.0),
            "integer logits": torch.zeros(2, 3, dtype=torch.long),
            "NaN": torch.full((2, 3), float("nan")),
            "list of 3": [torch.zeros(3)] * 3,
            "dict without rows": {"out": torch.zeros(3, 3)},
        },
    ),
    Case(
        targets.per_image_outputs,
        "output",
        lambda v: targets.per_image_outputs(v, 2),
        lambda: {
            "None": None,
            "int": 2,
            "wrong batch": torch.zeros(3, 4),
            "0-d": torch.tensor(0.0),
            "list of 1": [torch.zeros(3)],
            "dict without tensors": {"labels": [1, 2]},
            "dict with a short tensor": {"out": torch.zeros(2, 3), "aux": torch.zeros(1, 3)},
        },
    ),
    Case(
        targets.resolve_targets,
        "targets",
        lambda v: targets.resolve_targets(v, None, 2),
        lambda: {"str": "01", "dict": {0: targets.ClassTarget(0)}, "int": 0, "not callable": [0, 1], "count": []},
    ),
    Case(
        targets.resolve_targets,
        "class_idx",
        lambda v: targets.resolve_targets([targets.ClassTarget(0)] * 2, v, 2),
        lambda: {"both (int)": 0, "both (list)": [0, 1]},
    ),
    Case(
        targets.class_targets,
        "classes",
        targets.class_targets,
        lambda: {"None": None, "str": "12", "float": [1.5], "negative": [-1], "bool": [True]},
    ),
    # cost
    Case(
        cost.estimate_cost,
        "method",
        lambda v: cost.estimate_cost(v, [8], seconds_per_image=0.1),
        lambda: {"None": None, "unknown": "gradcam+++", "int": 3},
    ),
    Case(
        cost.estimate_cost,
        "channels",
        lambda v: cost.estimate_cost("scorecam", v, seconds_per_image=0.1),
        lambda: {"None": None, "empty": [], "int": 8, "zero": [0], "float": [8.0], "str": "8", "bool": [True]},
    ),
    Case(
        cost.estimate_cost,
        "seconds_per_image",
        lambda v: cost.estimate_cost("scorecam", [8], seconds_per_image=v),
        lambda: {"None": None, "negative": -0.1, "NaN": float("nan"), "Inf": float("inf"), "str": "1", "bool": True},
    ),
    Case(
        cost.estimate_cost,
        "batch_size",
        lambda v: cost.estimate_cost("scorecam", [8], seconds_per_image=0.1, batch_size=v),
        bad_ints,
    ),
    # the two timers take (model, input_size, batch_size) alike; an int size is a square side for them
    *(
        case
        for timer in (cost.time_forward, cost.time_passes)
        for case in (
            Case(timer, "model", lambda v, timer=timer: timer(v, 8), bad_models),
            Case(timer, "input_size", lambda v, timer=timer: timer(MODEL, v), bad_timer_sizes),
            Case(timer, "batch_size", lambda v, timer=timer: timer(MODEL, 8, batch_size=v), bad_ints),
        )
    ),
    Case(
        cost.estimate_cost,
        "passes",
        lambda v: cost.estimate_cost("shapleycam", [8], seconds_per_image=0.1, passes=v),
        lambda: {"None": None, "float": 0.2, "tuple": (0.01, 0.03, 0.2)},
    ),
    Case(
        cost.estimate_cost,
        "positions",
        lambda v: cost.estimate_cost(
            "kpcacam", [8], seconds_per_image=0.1, passes=cost.PassTimes(0, 0, 0, 1, 1), positions=v
        ),
        lambda: {"None": None, "str": "49", "too many": [49, 49], "zero": [0], "bool": [True], "float": [4.5]},
    ),
    # parsing
    Case(
        parsing.parse_int,
        "text",
        lambda v: parsing.parse_int(v, "text"),
        lambda: bad_texts() | {"superscript": "²", "huge": "9" * 5_000, "space": " 3", "empty": ""},
    ),
    # metrics
    *[
        row
        for name, metric in (
            ("deletion_insertion", metrics.deletion_insertion),
            ("road", metrics.road),
            ("confidence_change", metrics.confidence_change),
            ("average_drop_increase", metrics.average_drop_increase),
        )
        for row in (
            Case(metric, "model", lambda v, f=metric: f(v, X2, MAPS2, 0), bad_models),
            Case(
                metric,
                "x",
                lambda v, f=metric: f(MODEL, v, MAPS2, 0),
                lambda: _bad_metric_x(),
            ),
            Case(
                metric,
                "maps",
                lambda v, f=metric: f(MODEL, X2, v, 0),
                lambda: (
                    {k: v for k, v in bad_maps(3).items() if k != "tensor"}
                    | {
                        "other size": np.full((2, 4, 4), 0.5, np.float32),
                        "int tensor": torch.ones(2, 8, 8, dtype=torch.int64),
                    }
                ),
            ),
            Case(
                metric,
                "class",
                lambda v, f=metric: f(MODEL, X2, MAPS2, v),
                lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "one for two images": [1]},
            ),
        )
    ],
    Case(
        metrics.deletion_insertion,
        "steps",
        lambda v: metrics.deletion_insertion(MODEL, X2, MAPS2, 0, steps=v),
        bad_ints,
    ),
    Case(
        metrics.deletion_insertion,
        "batch_size",
        lambda v: metrics.deletion_insertion(MODEL, X2, MAPS2, 0, batch_size=v),
        bad_ints,
    ),
    Case(
        metrics.deletion_insertion,
        "baseline",
        lambda v: metrics.deletion_insertion(MODEL, X2, MAPS2, 0, baseline=v),
        lambda: {
            "None": None,
            "unknown": "black",
            "other shape": torch.zeros(2, 3, 4, 4),
            "int tensor": torch.zeros(2, 3, 8, 8, dtype=torch.long),
            "numpy": np.zeros((2, 3, 8, 8), np.float32),
        },
    ),
    Case(
        metrics.road,
        "percentiles",
        lambda v: metrics.road(MODEL, X2, MAPS2, 0, percentiles=v),
        lambda: {"None": None, "empty": (), "above 100": (50, 101), "negative": (-1,), "str": "10", "bool": (True,)},
    ),
    Case(
        metrics.road,
        "order",
        lambda v: metrics.road(MODEL, X2, MAPS2, 0, order=v),
        lambda: {"None": None, "unknown": "both", "upper": "MoRF", "list": ["morf"]},
    ),
    Case(
        metrics.road,
        "noise",
        lambda v: metrics.road(MODEL, X2, MAPS2, 0, noise=v),
        lambda: {"None": None, "negative": -0.1, "NaN": float("nan"), "Inf": float("inf"), "str": "0.1", "bool": True},
    ),
    Case(metrics.road, "seed", lambda v: metrics.road(MODEL, X2, MAPS2, 0, seed=v), lambda: bad_ints(0)),
    Case(
        metrics.confidence_change,
        "batch_size",
        lambda v: metrics.confidence_change(MODEL, X2, MAPS2, 0, batch_size=v),
        bad_ints,
    ),
    Case(metrics.blurred, "x", metrics.blurred, lambda: bad_tensors(4)),
    Case(
        metrics.baseline_maps,
        "x",
        metrics.baseline_maps,
        lambda: {
            **{k: v for k, v in bad_tensors(4).items() if k not in ("list",)},
            "2-D shape": (8, 8),
            "zero side": (2, 0, 8),
            "float shape": (2, 8.5, 8),
        },
    ),
    Case(
        metrics.baseline_maps,
        "x",
        lambda v: metrics.baseline_maps(v, "edges"),
        lambda: {"shape": (2, 8, 8), "None": None, "numpy": np.zeros((2, 3, 8, 8), np.float32)},
    ),
    Case(
        metrics.baseline_maps,
        "kind",
        lambda v: metrics.baseline_maps(X2, v),
        lambda: {"None": None, "unknown": "sobel", "int": 0},
    ),
    Case(metrics.baseline_maps, "seed", lambda v: metrics.baseline_maps(X2, seed=v), lambda: bad_ints(0)),
    Case(
        metrics.cascading_randomization,
        "model",
        lambda v: metrics.cascading_randomization(v, X2, 0, _explain_edges),
        bad_models,
    ),
    Case(
        metrics.cascading_randomization,
        "x",
        lambda v: metrics.cascading_randomization(MODEL, v, 0, _explain_edges),
        lambda: _bad_metric_x(),
    ),
    Case(
        metrics.cascading_randomization,
        "class",
        lambda v: metrics.cascading_randomization(MODEL, X2, v, _explain_edges),
        lambda: {"float": 1.5, "too large": 10, "negative": -1, "one for two images": [1]},
    ),
    Case(
        metrics.cascading_randomization,
        "explain",
        lambda v: metrics.cascading_randomization(MODEL, X2, 0, v),
        lambda: {
            "None": None,
            "str": "gradcam",
            "one map": lambda m, x, k: MAPS2[:1],
            "2-D": lambda m, x, k: MAPS2[0],
            "int maps": lambda m, x, k: np.zeros((2, 8, 8), np.int64),
            "NaN maps": lambda m, x, k: np.full((2, 8, 8), np.nan, np.float32),
            "unscaled maps": lambda m, x, k: MAPS2 * 40,
        },
    ),
    Case(
        metrics.cascading_randomization,
        "seed",
        lambda v: metrics.cascading_randomization(MODEL, X2, 0, _explain_edges, seed=v),
        lambda: bad_ints(0),
    ),
    *(
        Case(
            metrics.faithfulness_scores,
            argument,
            lambda v, k=keyword: metrics.faithfulness_scores(**_faithfulness(k, v)),
            bad,
        )
        for argument, keyword, bad in (
            ("model", "model", bad_models),
            ("x", "x", _bad_metric_x),
            (
                "maps",
                "maps",
                lambda: {k: v for k, v in bad_maps(3).items() if k != "tensor"} | {"other size": MAPS2[:, :4, :4]},
            ),
            (
                "class",
                "class_idx",
                lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "one for two images": [1]},
            ),
            ("steps", "steps", bad_ints),
            (
                "baseline",
                "baseline",
                lambda: {"None": None, "unknown": "black", "other shape": torch.zeros(2, 3, 4, 4)},
            ),
            (
                "noise",
                "noise",
                lambda: {"None": None, "negative": -0.1, "NaN": float("nan"), "str": "0.1", "bool": True},
            ),
            ("seed", "seed", lambda: bad_ints(0)),
        )
    ),
    Case(metrics.baseline_scores, "model", lambda v: metrics.baseline_scores(v, X2, 0, kinds=("random",)), bad_models),
    Case(
        metrics.baseline_scores,
        "x",
        lambda v: metrics.baseline_scores(MODEL, v, 0, kinds=("random",)),
        lambda: _bad_metric_x() | {"shape": (2, 8, 8)},
    ),
    Case(
        metrics.baseline_scores,
        "class",
        lambda v: metrics.baseline_scores(MODEL, X2, v, kinds=("random",)),
        lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "one for two images": [1]},
    ),
    Case(
        metrics.baseline_scores,
        "kinds",
        lambda v: metrics.baseline_scores(MODEL, X2, 0, kinds=v),
        lambda: {"None": None, "str": "random", "empty": (), "unknown": ("random", "sobel"), "ints": (0,)},
    ),
    Case(
        metrics.baseline_scores,
        "seed",
        lambda v: metrics.baseline_scores(MODEL, X2, 0, kinds=("random",), seed=v),
        lambda: bad_ints(0),
    ),
    Case(
        metrics.baseline_scores,
        "option",
        lambda v: metrics.baseline_scores(MODEL, X2, 0, kinds=("random",), **v),
        lambda: {"unknown": {"stpes": 5}, "maps": {"maps": MAPS2}, "progress": {"progress": print}},
    ),
    Case(
        metrics.compare_with_baselines,
        "method_scores",
        lambda v: metrics.compare_with_baselines(v, {"random": SCORES}),
        lambda: _bad_scores(),
    ),
    Case(
        metrics.compare_with_baselines,
        "baselines",
        lambda v: metrics.compare_with_baselines(SCORES, v),
        lambda: {
            "None": None,
            "empty": {},
            "list": [SCORES],
            "scores not by kind": SCORES,
            "missing metric": {"random": {"road": 0.0}},
            **{f"kind with {k}": {"random": v} for k, v in _bad_scores().items()},
        },
    ),
    Case(
        metrics.compare_with_baselines,
        "margin",
        lambda v: metrics.compare_with_baselines(SCORES, {"random": SCORES}, margin=v),
        lambda: {"None": None, "negative": -0.1, "NaN": float("nan"), "Inf": float("inf"), "str": "0", "bool": True},
    ),
    Case(
        metrics.rank_by_faithfulness,
        "means",
        metrics.rank_by_faithfulness,
        lambda: {
            "None": None,
            "empty": {},
            "list": [SCORES],
            "differing metrics": {"a": SCORES, "b": {"road": 0.5}},
            **{f"candidate with {k}": {"a": v} for k, v in _bad_scores().items()},
        },
    ),
    Case(
        metrics.random_logit,
        "model",
        lambda v: metrics.random_logit(v, X2, 0, _explain_edges),
        lambda: {**bad_models(), "one class": _one_class_model()},
    ),
    Case(
        metrics.random_logit,
        "x",
        lambda v: metrics.random_logit(MODEL, v, 0, _explain_edges),
        lambda: _bad_metric_x(),
    ),
    Case(
        metrics.random_logit,
        "class",
        lambda v: metrics.random_logit(MODEL, X2, v, _explain_edges),
        lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "one for two images": [1]},
    ),
    Case(
        metrics.random_logit,
        "explain",
        lambda v: metrics.random_logit(MODEL, X2, 0, v),
        lambda: {
            "None": None,
            "str": "gradcam",
            "one map per image of x": lambda m, x, k: MAPS2,
            "2-D": lambda m, x, k: MAPS2[0],
            "int maps": lambda m, x, k: np.zeros((4, 8, 8), np.int64),
            "NaN maps": lambda m, x, k: np.full((4, 8, 8), np.nan, np.float32),
            "unscaled maps": lambda m, x, k: np.full((4, 8, 8), 20.0, np.float32),
            "list": lambda m, x, k: np.full((4, 8, 8), 0.5).tolist(),
        },
    ),
    Case(
        metrics.random_logit,
        "seed",
        lambda v: metrics.random_logit(MODEL, X2, 0, _explain_edges, seed=v),
        lambda: bad_ints(0),
    ),
    # pixel_attribution
    *(
        row
        for function, model_faults in (
            (pixel_attribution.compute_guided_backprop, {"no rectifier": _silu_model()}),
            (pixel_attribution.compute_fullgrad, {"no bias layer": _biasless_model()}),
        )
        for row in (
            Case(function, "model", lambda v, f=function: f(v, X), lambda m=model_faults: {**bad_models(), **m}),
            Case(
                function,
                "x",
                lambda v, f=function: f(MODEL, v),
                lambda: {
                    **bad_tensors(4),
                    "channels last": torch.randn(1, 32, 32, 3),
                    "zero side": torch.zeros(1, 3, 0, 8),
                },
            ),
            Case(
                function,
                "class",
                lambda v, f=function: f(MODEL, X, class_idx=v),
                lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "two for one image": [1, 2]},
            ),
        )
    ),
    Case(
        pixel_attribution.compute_guided_gradcam,
        "model",
        lambda v: pixel_attribution.compute_guided_gradcam(v, X, ["0"]),
        bad_models,
    ),
    Case(
        pixel_attribution.compute_guided_gradcam,
        "x",
        lambda v: pixel_attribution.compute_guided_gradcam(MODEL, v, ["0"]),
        lambda: {**bad_tensors(4), "channels last": torch.randn(1, 32, 32, 3)},
    ),
    Case(
        pixel_attribution.compute_guided_gradcam,
        "layer",
        lambda v: pixel_attribution.compute_guided_gradcam(MODEL, X, v),
        lambda: {**_layers_no_uint8_images(), "unknown": ["layer9"]},
    ),
    Case(
        pixel_attribution.compute_guided_gradcam,
        "class",
        lambda v: pixel_attribution.compute_guided_gradcam(MODEL, X, ["0"], class_idx=v),
        lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "two for one image": [1, 2]},
    ),
    Case(
        pixel_attribution.compute_guided_gradcam,
        "layouts",
        lambda v: pixel_attribution.compute_guided_gradcam(MODEL, X, ["0"], layouts=v),
        lambda: {"str": "nchw", "list": ["nchw"], "other layer": {"2": "nchw"}},
    ),
    Case(
        pixel_attribution.attribution_images,
        "attributions",
        pixel_attribution.attribution_images,
        lambda: {
            "None": None,
            "list": np.zeros((1, 3, 2, 2)).tolist(),
            "tensor": torch.zeros(1, 3, 8, 8),
            "3-D": np.zeros((3, 8, 8), np.float32),
            "int": np.zeros((1, 3, 8, 8), np.int32),
            "bool": np.zeros((1, 3, 8, 8), bool),
            "NaN": np.full((1, 3, 8, 8), np.nan, np.float32),
            "Inf": np.full((1, 3, 8, 8), np.inf, np.float32),
            "empty": np.zeros((0, 3, 8, 8), np.float32),
            "zero side": np.zeros((1, 3, 0, 8), np.float32),
        },
    ),
    # stability
    Case(
        stability.reporting_progress,
        "callback",
        lambda v: stability.reporting_progress(v).__enter__(),
        lambda: {"None": None, "int": 3, "str": "bar", "list": [print]},
    ),
    Case(
        stability.map_correlation,
        "a",
        lambda v: stability.map_correlation(v, CAM, CAM > 0),
        lambda: _bad_stability_maps(),
    ),
    Case(
        stability.map_correlation,
        "b",
        lambda v: stability.map_correlation(CAM, v, CAM > 0),
        lambda: _bad_stability_maps(),
    ),
    Case(
        stability.top_fraction_iou,
        "valid",
        lambda v: stability.top_fraction_iou(CAM, CAM, v),
        lambda: {"None": None, "float": CAM, "other shape": np.ones((4, 4), bool), "list": [[True]]},
    ),
    Case(
        stability.top_fraction_iou,
        "fraction",
        lambda v: stability.top_fraction_iou(CAM, CAM, CAM > 0, fraction=v),
        lambda: {"None": None, "zero": 0, "above 1": 1.5, "str": "0.2", "bool": True},
    ),
    *[
        row
        for function, call in (
            (stability.augmentation_stability, _stability),
            (stability.stability_views, _stability_views),
            (stability.flip_curve, _flip_curve),
        )
        for row in (
            Case(function, "model", lambda v, f=call: f(model=v), bad_models),
            Case(function, "pipeline", lambda v, f=call: f(pipeline=v), bad_pipelines),
            Case(
                function,
                "layer",
                lambda v, f=call: f(layer=v),
                lambda: {"None": None, "int": 0, "unknown": "layer4", "empty": "", "list": ["0"]},
            ),
            Case(
                function,
                "preprocessing",
                lambda v, f=call: f(preprocessing=v),
                lambda: {"None": None, "spec": SPEC, "dict": {"resize": 8}},
            ),
            Case(function, "method", lambda v, f=call: f(method=v), lambda: {"None": None, "unknown": "gradcam2"}),
            Case(function, "n_views", lambda v, f=call: f(n_views=v), lambda: bad_ints(1) | {"too many": 10_000}),
        )
    ],
    Case(stability.augmentation_stability, "images", lambda v: _stability(images=v), bad_batches),
    Case(stability.flip_curve, "images", lambda v: _flip_curve(images=v), bad_batches),
    Case(stability.stability_views, "image", lambda v: _stability_views(image=v), bad_images),
    Case(
        stability.augmentation_stability,
        "class",  # "class index 10 is out of range" (compute_cams checks the range on the logits)
        lambda v: _stability(class_idx=v),
        lambda: {"float": 1.5, "str": "1", "too large": 10, "negative": -1, "one for two images": [1], "bool": True},
    ),
    Case(
        stability.stability_views,
        "class",  # "class index 10 is out of range" (compute_cams checks the range on the logits)
        lambda v: _stability_views(class_idx=v),
        lambda: {"float": 1.5, "list": [1], "too large": 10, "negative": -1},
    ),
    Case(
        stability.flip_curve,
        "sweep",
        lambda v: _flip_curve(sweep=v),
        lambda: {
            "None": None,
            "dict": {"step_index": 0},
            "step out of range": stability.Sweep(3, "p", (0.5,)),
            "not numeric": stability.Sweep(0, "p", (0.5,)),
            "no values": stability.Sweep(0, "limit", ()),
            "bad value": stability.Sweep(0, "limit", (500.0,)),
        },
    ),
    # device
    Case(
        device.parse_device,
        "device",
        device.parse_device,
        lambda: {"None": None, "gpu": "gpu", "bad index": "cuda:x", "empty": "", "float": 1.5, "cuda:99": "cuda:99"},
    ),
]

# Public functions without a row, and why.
EXEMPT: dict[Callable, str] = {
    # No data argument.
    device.default_device: "no argument (reads $CAMLIB_DEVICE)",
    device.available_devices: "no argument",
    guard.owned_by_this_thread: "no argument",
    models.bundled_weights_path: "no argument",
    cifar.default_root: "no argument (reads $CAMLIB_CIFAR10_ROOT)",
    prediction_cache.default_cache_dir: "no argument (reads $CAMLIB_CACHE_DIR)",
    prediction_cache.clear_memory_cache: "no argument",
    models.downloads_enabled: "no argument (reads the operator's $CAMLIB_DOWNLOADS)",
    cost.time_eigenproblems: "no argument (times fixed probe sizes)",
    augment.grid.check_grid_pixels: "a check itself, on the counts and sizes augment_grid and estimate_grid validated",
    # Predicates and descriptions whose every answer is their contract.
    checkpoints.looks_like_safetensors: "a predicate on any bytes: False is its answer for anything else",
    checkpoints.tensor_kind: "describes a tensor torch just loaded, for the refusal message",
    cam.working_dtype: "maps a tensor's own torch.dtype (never user data) to the dtype methods compute in",
    layouts.conv_grid_fits: "arithmetic on (grid side, input side) pairs that layout_readings and confirm_layout "
    "built from checked shapes and sizes",
    models.error_reason: "describes any exception for a message (tests/test_models.py)",
    parsing.int_or_none: "returns None for every value parse_int refuses: no error is its contract",
    augment.catalogue.shown: "formats any value for a message: no error is its contract",
    # Command-line entry points: argparse validates and exits with a usage message.
    train.parse_args: "CLI entry point (argparse reports bad arguments)",
    train.main: "CLI entry point (argparse reports bad arguments)",
    batch.parse_args: "CLI entry point (argparse reports bad arguments; run_batch checks the values)",
    batch.main: "CLI entry point (argparse reports bad arguments)",
    # Accept any object by contract (what torch.load returned): a non-state-dict has nothing to read.
    checkpoints.candidate_readings: "takes any loaded object; a non-state-dict has no readings ([])",
    checkpoints.weight_tensors: "takes any loaded object; a non-state-dict has no tensors (empty iterator)",
    contracts.describe: "describes any value for messages",
    targets.class_of: "a predicate on any object: None is its answer for anything that is not a class target",
    targets.is_logit_target: "a predicate on any object: False is its answer for anything else",
    targets.upcast_output: "walks any model output; what is not a half-precision tensor is returned as it is",
    cli.run_command: "runs the command's own checked work; it only turns CamlibError and Ctrl-C into exit statuses",
    # Helpers of the augment package that its split made public; only validate_step calls them (it turns
    # normalise_value's ValueError into a PipelineError naming the step and parameter, tested in test_augment.py).
    augment.catalogue.normalise_value: "internal to validate_step, which types its errors",
    augment.catalogue.schema_bounds: "internal: reads an Albumentations pydantic field, never user data",
}
# Public classes other than exceptions have no row: they are records and torch modules whose data is checked where
# it is used. Each says where; a new class without an entry fails test_every_public_class_is_accounted_for.
_RESULT = "a result camlib builds from inputs it has already checked"
EXEMPT_CLASSES: dict[type, str] = {
    augment.catalogue.ParamSpec: "catalogue record written in camlib (tests/test_augment.py checks every entry)",
    augment.catalogue.TransformSpec: "catalogue record written in camlib (tests/test_augment.py checks every entry)",
    augment.catalogue.UIOverride: "catalogue record written in camlib (tests/test_augment.py checks every entry)",
    augment.PipelineStep: "user data, checked by validate_step/build_pipeline (rows above)",
    augment.Pipeline: "user data, checked by build_pipeline and every function taking one (rows above)",
    augment.GridResult: _RESULT,
    augment.GridEstimate: _RESULT,
    augment.SizeBox: _RESULT,
    augment.TileSteps: _RESULT,
    cam.LayerEvidence: "built by compute_cams for its registered methods (x and layers checked by compute_cams)",
    cam.MethodSpec: "built by register_method (row above)",
    cost.CostEstimate: _RESULT,
    cost.PassTimes: _RESULT,
    cam.Progress: "built by compute_cams from its checked progress argument",
    cam.CamOptions: "a record of options; compute_cams and compute_cam_grid check each where it is used",
    cam.CamResult: _RESULT,
    checkpoints.CheckpointReading: _RESULT,
    cifar.CifarData: _RESULT,
    cifar_models.CifarArch: "registry record written in camlib",
    cifar_models.BasicBlock: "torch module: inputs are checked by compute_cams / predict_probabilities / train_step",
    cifar_models.CifarResNet: "torch module: inputs are checked by compute_cams / predict_probabilities / train_step",
    evaluation.FlipReport: _RESULT,
    imaging.DecodedImage: _RESULT,
    layers.LayerInfo: _RESULT,
    layouts.Layout: "built by infer_layout / layout_from_spec (rows above)",
    models.Preprocessing: "registry record written in camlib; checked by prepare_input/prepare_batch (rows above)",
    models.ModelSpec: "registry record written in camlib; checked by the functions taking a spec (rows above)",
    models.LoadedModel: _RESULT,
    models.PreparedInput: _RESULT,
    metrics.DeletionInsertion: _RESULT,
    metrics.RoadResult: _RESULT,
    metrics.ConfidenceDrop: _RESULT,
    metrics.SanityResult: _RESULT,
    metrics.RandomLogitResult: _RESULT,
    metrics.FaithfulnessScores: _RESULT,
    metrics.BaselineComparison: _RESULT,
    pixel_attribution.GuidedBackpropResult: _RESULT,
    pixel_attribution.GuidedGradCamResult: _RESULT,
    pixel_attribution.FullGradResult: _RESULT,
    pixel_attribution.PixelMethodSpec: "registry record written in camlib (PIXEL_METHODS)",
    train.TrainConfig: "built by parse_args (argparse) and checked by train (row above)",
    batch.BatchConfig: "built by parse_args (argparse) and checked by run_batch (row above)",
    batch.BatchSummary: _RESULT,
    stability.StabilityScores: _RESULT,
    stability.StepStability: _RESULT,
    stability.ViewMaps: _RESULT,
    stability.StabilityReport: _RESULT,
    stability.FlipCurve: _RESULT,
    stability.Sweep: "user data, checked by flip_curve (row above)",
    targets.ClassTarget: "what a map explains: applied by target_scores, which types its failures (rows above)",
    targets.SoftmaxTarget: "what a map explains: applied by target_scores, which types its failures (rows above)",
    targets.SigmoidTarget: "what a map explains: applied by target_scores, which types its failures (rows above)",
    targets.BinaryTarget: "what a map explains: applied by target_scores, which types its failures (rows above)",
}


def _name(function: Callable) -> str:
    return f"{function.__module__.removeprefix('camlib.')}.{function.__qualname__}"


def _public_functions() -> set[Callable]:
    """Every public function defined (not re-imported) in a camlib module, subpackages included."""
    found = set()
    for info in pkgutil.walk_packages(camlib.__path__, "camlib."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__:
                found.add(value)
    return found


def test_every_public_class_is_accounted_for():
    found = set()
    for info in pkgutil.walk_packages(camlib.__path__, "camlib."):
        module = importlib.import_module(info.name)
        found |= {
            value
            for name, value in vars(module).items()
            if not name.startswith("_")
            and inspect.isclass(value)
            and value.__module__ == module.__name__
            and not issubclass(value, BaseException)
        }
    assert not sorted(map(_name, found - set(EXEMPT_CLASSES))), "public classes without an entry in EXEMPT_CLASSES"
    assert not sorted(map(_name, set(EXEMPT_CLASSES) - found)), "EXEMPT_CLASSES names classes that are gone"


def test_every_public_function_is_covered():
    covered = {case.function for case in CASES}
    public = _public_functions()
    missing = sorted(map(_name, public - covered - set(EXEMPT)))
    assert not missing, f"public camlib functions without an input-contract row (add one to CASES): {missing}"
    assert not sorted(map(_name, (covered | set(EXEMPT)) - public)), "rows or exemptions for non-public functions"
    assert not covered & set(EXEMPT), "a function is both covered and exempt"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never touch the network: any download that gets past validation fails as offline would."""

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


# Rows that fail today in code this test's author may not edit, as strict xfails so that a fix shows up (XPASS fails:
# then delete the entry). (function, argument) -> (the failing labels, or None for all; why).
KNOWN_GAPS: dict[tuple[Callable, str], tuple[tuple[str, ...] | None, str]] = {}


def _rows() -> list:
    rows = []
    for case in CASES:
        labels, reason = KNOWN_GAPS.get((case.function, case.argument), ((), ""))
        for label in case.bad():
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if labels is None or label in labels else []
            rows.append(pytest.param(case, label, marks=marks, id=f"{_name(case.function)}-{case.argument}-{label}"))
    return rows


@pytest.mark.bad_input(43)
@pytest.mark.parametrize(("case", "label"), _rows())
def test_contract_violation_is_a_typed_error_naming_the_argument(case: Case, label: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a path-like bad value must never create files in the repository
    value = case.bad()[label]
    with pytest.raises(CamlibError) as caught:
        case.call(value)
    assert case.argument.lower() in str(caught.value).lower(), (
        f"{_name(case.function)}: the message does not name {case.argument!r}: {caught.value}"
    )


# --- legitimate conversions stay conversions -----------------------------------------------------------------------


@pytest.mark.bad_input(43)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_maps_of_any_width_give_the_float32_result(dtype):
    """Maps may be float16/32/64; each gives exactly what the same values as float32 give (no refusal, no drift)."""
    rng = np.random.default_rng(0)
    cam32 = rng.random((7, 5), dtype=np.float32).astype(dtype).astype(np.float32)
    cam_any = cam32.astype(dtype)
    np.testing.assert_array_equal(overlay.colorize(cam_any), overlay.colorize(cam32))
    np.testing.assert_array_equal(overlay.resize_map(cam_any, (10, 14)), overlay.resize_map(cam32, (10, 14)))
    image = rng.integers(0, 256, (14, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay.overlay_heatmap(image, cam_any), overlay.overlay_heatmap(image, cam32))
    assert overlay.resize_map(cam_any, (10, 14)).dtype == np.float32


@pytest.mark.bad_input(43)
@pytest.mark.parametrize(
    "convert",
    [list, tuple, lambda a: a.astype(np.int32), lambda a: a.astype(np.uint8)],
    ids=["list", "tuple", "int32", "uint8"],
)
def test_confusion_matrix_converts_integer_sequences(convert):
    labels, predictions = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1])
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 2]], np.int64)
    matrix = evaluation.confusion_matrix(convert(labels), convert(predictions), 3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_allclose(evaluation.per_class_accuracy(matrix), [1.0, 0.5, 1.0])


@pytest.mark.bad_input(43)
def test_maps_and_images_upscale_alike():
    """upscale_nearest takes uint8 RGB images and (H, W) maps of any numeric dtype, and keeps the dtype."""
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for value in (image, image[..., 0].astype(np.float64), image[..., 0].astype(bool)):
        out = overlay.upscale_nearest(value, 4)
        assert out.dtype == value.dtype and out.shape[:2] == (4, 6)
        np.testing.assert_array_equal(out[::2, ::2], value)


@pytest.mark.bad_input(43)
def test_a_model_on_another_device_is_refused_before_any_forward():
    """A CPU batch for a model whose weights live elsewhere (``meta`` stands in for a GPU on a CPU-only machine)."""
    calls = []
    model = _tiny_model().to("meta")
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    for call in (
        lambda: evaluation.predict_probabilities(model, IMAGES, PRE),
        lambda: layers.list_candidate_layers(model, (8, 8)),
        lambda: train.evaluate(model, DATA, torch.device("cpu")),
    ):
        with pytest.raises(CamlibError, match="meta"):
            call()
    assert calls == []
