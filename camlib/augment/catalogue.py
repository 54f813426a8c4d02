"""The transforms the Augmentation Lab edits, each parameter derived from the transform's own schema.

The catalogue (``TRANSFORMS``) derives every parameter's kind, default and bounds from the transform's own pydantic
``InitSchema`` and ``__init__`` signature; ``UIOverride`` entries only add what a schema cannot say (slider bounds for
unbounded values, steps, CIFAR-sized defaults) and ``EXCLUDED`` names what the lab does not expose, with the reason.
An Albumentations upgrade that renames or removes a parameter therefore fails ``tests/test_augment.py`` instead of
showing a silently wrong slider. ``normalise_value`` checks one value against its ``ParamSpec``.
"""

from __future__ import annotations

import inspect
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import annotated_types
import cv2
import numpy as np
from albumentations.augmentations.mixing.domain_adaptation import BaseDomainAdaptation

from camlib.errors import PipelineError

ParamKind = Literal["float", "int", "range", "int_range", "int_pair", "choice", "bool", "colour"]


@dataclass(frozen=True)
class ParamSpec:
    """One editable parameter of a transform.

    Attributes:
        name: the transform's keyword argument.
        kind: "float" / "int" scalar; "range" / "int_range" an ordered ``(low, high)`` interval sampled from;
            "int_pair" an unordered pair such as ``(height, width)``; "choice" one of ``choices``; "bool";
            "colour" an RGB triple of ints 0-255.
        default: the value a new step starts with (tuples for pairs and colours).
        low, high: inclusive bounds of each number (None for choice/bool); within the schema's own bounds.
        step: slider step for numbers (None for choice/bool).
        choices: allowed values of a "choice" (e.g. OpenCV enum ints), with human ``choice_labels``.
    """

    name: str
    kind: ParamKind
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    choice_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransformSpec:
    """A catalogued Albumentations transform.

    Attributes:
        name: the Albumentations class name (also the registry key and the ``__class_fullname__`` of exports).
        transform: the class itself.
        category: a UI group ("crop & pad", "geometric", "colour", "blur & noise", "dropout", "distortion").
        summary: the first paragraph of the class docstring, on one line.
        default_p: the class's own default probability.
        params: editable parameters, in signature order.
        targets: what the transform applies to, as Albumentations declares it ("Image", "Mask", "BBoxes"...).
        reference_key: for a transform that matches the image to a second one (FDA, HistogramMatching...), the
            data key that carries it (``augment_image`` passes the references there); None for the others.
    """

    name: str
    transform: type[A.BasicTransform]
    category: str
    summary: str
    default_p: float
    params: tuple[ParamSpec, ...]
    targets: tuple[str, ...] = ()
    reference_key: str | None = None

    def param(self, name: str) -> ParamSpec:
        """The parameter called ``name``; raises ``PipelineError`` listing the valid names."""
        for spec in self.params:
            if spec.name == name:
                return spec
        valid = ", ".join(p.name for p in self.params) or "none"
        raise PipelineError(
            f"{self.name} has no parameter '{name}' (editable: {valid})", transform=self.name, param=name
        )

    def defaults(self) -> dict[str, Any]:
        """Every editable parameter at its default."""
        return {spec.name: spec.default for spec in self.params}


KEEP: Any = object()  # "use the schema/signature's own value" in UIOverride


@dataclass(frozen=True)
class UIOverride:
    """What a schema cannot say: slider bounds of unbounded values, steps, CIFAR-sized defaults, a pair's meaning."""

    kind: ParamKind | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    default: Any = KEEP
    choices: tuple[Any, ...] | None = None  # a subset of the schema's, where the others fail at run time


# Not editable anywhere: the step's own probability, strictness we always set, and mask/keypoint-only settings.
GLOBAL_EXCLUDED: dict[str, str] = {
    "p": "the step's probability is PipelineStep.p",
    "strict": "build_pipeline always passes strict=True",
    "always_apply": "deprecated in Albumentations 2",
    "mask_interpolation": "applies to masks only; the lab augments images",
    "fill_mask": "applies to masks only",
    "keypoint_remapping_method": "applies to keypoints only",
}

# Per transform: parameters the lab leaves at the library default, and why.
EXCLUDED: dict[str, dict[str, str]] = {
    "PadIfNeeded": {
        "pad_height_divisor": "the lab pads to min_height",
        "pad_width_divisor": "the lab pads to min_width",
    },
    "Affine": {"translate_px": "the lab shifts by translate_percent, which works for every image size"},
    "Perspective": {
        "fit_output": "expands to the warped image's bounding box, which a near-degenerate quadrilateral makes "
        "unbounded (a 32x48 image became 2176x3596 at scale 0.5): the library default, off"
    },
    "ToGray": {"num_output_channels": "the lab's contract is 3-channel RGB"},
    "Equalize": {"mask": "takes an array or a callable", "mask_params": "only used with a callable mask"},
    "GaussianBlur": {"blur_limit": "0 derives the kernel size from sigma, the only setting valid at every sigma"},
    "GridDropout": {
        "unit_size_range": "None lets holes_number_xy/ratio size the grid",
        "holes_number_xy": "None derives the hole count from the image size",
    },
    "AdditiveNoise": {"noise_params": "a dict whose keys depend on noise_type: the library's default per type"},
    "AutoContrast": {"ignore": "a pixel value to leave out of the histogram, meant for label masks; None"},
    "CropAndPad": {"px": "the lab crops and pads by percent, which works for every image size"},
    "Downscale": {"interpolation_pair": "a dict of two OpenCV flags: the library default (nearest both ways)"},
    "LongestMaxSize": {"max_size_hw": "the lab sets max_size"},
    "SmallestMaxSize": {"max_size_hw": "the lab sets max_size"},
    "PixelDropout": {"mask_drop_value": "applies to masks only"},
    "PlanckianJitter": {"temperature_limit": "None picks the mode's own valid range (3000-15000 K or 4000-15000 K)"},
    "PlasmaShadow": {"plasma_size": "not in the transform's InitSchema in 2.0.8: always 256"},
    "RandomGravel": {"gravel_roi": "a 4-number region (x_min, y_min, x_max, y_max): the library default"},
    "RandomRain": {"drop_length": "None scales the drops to the image height"},
    "RandomShadow": {"shadow_roi": "a 4-number region (x_min, y_min, x_max, y_max): the library default"},
    "RandomSunFlare": {"flare_roi": "a 4-number region (x_min, y_min, x_max, y_max): the library default"},
    "ShiftScaleRotate": {
        "shift_limit_x": "None shifts both axes by shift_limit",
        "shift_limit_y": "None shifts both axes by shift_limit",
    },
    "Spatter": {"color": "None picks the mode's colour (rain or mud)"},
    "AdvancedBlur": {"beta_limit": "must contain 1.0, a rule one range slider cannot keep: the default (0.5, 8.0)"},
    "HEStain": {"preset": "only for method='preset', which the lab leaves out: the other methods need none"},
    **{
        name: {
            "reference_images": "deprecated: the lab passes the second image per call (metadata_key)",
            "read_fn": "deprecated with reference_images",
            "metadata_key": "the lab's own key, fixed",
        }
        for name in ("FDA", "HistogramMatching", "PixelDistributionAdaptation")
    },
}

# A shift of a uint8 channel, in grey levels, one level per slider step.
_UINT8_SHIFT = UIOverride(low=-255.0, high=255.0, step=1.0)

UI_OVERRIDES: dict[str, dict[str, UIOverride]] = {
    # crop/pad sizes are scaled for 32x32 CIFAR-10; larger images still work, the crops are just small
    "PadIfNeeded": {
        "min_height": UIOverride(low=8, high=64, default=40),
        "min_width": UIOverride(low=8, high=64, default=40),
    },
    "RandomCrop": {
        "height": UIOverride(low=8, high=64, default=32),
        "width": UIOverride(low=8, high=64, default=32),
        # padding keeps a 64-px crop valid on a 32-px image, so every slider position works on CIFAR
        "pad_if_needed": UIOverride(default=True),
    },
    "RandomResizedCrop": {
        "size": UIOverride(kind="int_pair", low=8, high=64, default=(32, 32)),
        "scale": UIOverride(low=0.05),
        "ratio": UIOverride(low=0.25, high=4.0),
    },
    "Affine": {
        "scale": UIOverride(low=0.5, high=2.0, default=(1.0, 1.0)),
        "translate_percent": UIOverride(low=-0.5, high=0.5, default=(0.0, 0.0)),
        "rotate": UIOverride(low=-180.0, high=180.0, step=1.0, default=(0.0, 0.0)),
        "shear": UIOverride(low=-45.0, high=45.0, step=1.0, default=(0.0, 0.0)),
    },
    "Rotate": {"limit": UIOverride(low=-180.0, high=180.0, step=1.0)},
    # CoarseDropout reads both hole ranges as pixels once hole_height_range[1] >= 1: fractions stop below 1
    "CoarseDropout": {
        "num_holes_range": UIOverride(high=16),
        "hole_height_range": UIOverride(low=0.01, high=0.99),
        "hole_width_range": UIOverride(low=0.01, high=0.99),
    },
    "GridDropout": {"ratio": UIOverride(low=0.05), "shift_xy": UIOverride(kind="int_pair", high=16)},
    "RandomBrightnessContrast": {
        "brightness_limit": UIOverride(low=-1.0, high=1.0),
        "contrast_limit": UIOverride(low=-1.0, high=1.0),
    },
    "HueSaturationValue": {
        "hue_shift_limit": UIOverride(low=-180.0, high=180.0, step=1.0),
        **dict.fromkeys(("sat_shift_limit", "val_shift_limit"), _UINT8_SHIFT),
    },
    # ColorJitter's bounds live in a field validator (not introspectable): hue in [-0.5, 0.5], the others >= 0.
    "ColorJitter": {
        **dict.fromkeys(("brightness", "contrast", "saturation"), UIOverride(low=0.0, high=2.0)),
        "hue": UIOverride(low=-0.5, high=0.5),
    },
    "RGBShift": dict.fromkeys(("r_shift_limit", "g_shift_limit", "b_shift_limit"), _UINT8_SHIFT),
    "CLAHE": {
        "clip_limit": UIOverride(high=16.0, step=0.1, default=(1.0, 4.0)),
        "tile_grid_size": UIOverride(kind="int_pair", high=16),
    },
    "Posterize": {"num_bits": UIOverride(low=1, high=7, default=(4, 4))},  # [1, 7] is checked in a field validator
    "Sharpen": {
        "lightness": UIOverride(high=2.0),
        "kernel_size": UIOverride(high=15, step=2),
        "sigma": UIOverride(low=0.1, high=5.0),
    },
    "GaussNoise": {"mean_range": UIOverride(low=-1.0, high=1.0)},
    "GaussianBlur": {"sigma_limit": UIOverride(low=0.1, high=5.0, step=0.1)},
    "MotionBlur": {"blur_limit": UIOverride(low=3, high=15, step=2)},  # odd kernels only: step 2 from 3
    "Perspective": {"scale": UIOverride(low=0.0, high=0.5)},
    "ElasticTransform": {"alpha": UIOverride(high=200.0, step=1.0), "sigma": UIOverride(high=100.0, step=1.0)},
    # GridDistortion checks distort_limit in [-1, 1] in a field validator; +-0.5 keeps the grid legible.
    "GridDistortion": {"num_steps": UIOverride(high=16), "distort_limit": UIOverride(low=-0.5, high=0.5)},
    "OpticalDistortion": {"distort_limit": UIOverride(low=-1.0, high=1.0)},
    # sizes in pixels, scaled for 32x32 CIFAR-10 (crops pad when larger than the image)
    "CenterCrop": {
        "height": UIOverride(low=8, high=64, default=24),
        "width": UIOverride(low=8, high=64, default=24),
        "pad_if_needed": UIOverride(default=True),
    },
    # corners kept apart (min <= 16 < 17 <= max) so that every slider position is a valid box
    "Crop": {
        "x_min": UIOverride(high=16, default=4),
        "y_min": UIOverride(high=16, default=4),
        "x_max": UIOverride(low=17, high=64, default=28),
        "y_max": UIOverride(low=17, high=64, default=28),
        "pad_if_needed": UIOverride(default=True),
    },
    "CropAndPad": {"percent": UIOverride(kind="range", low=-0.5, high=0.5, default=(-0.1, 0.1))},
    "Pad": {"padding": UIOverride(kind="int_pair", low=0, high=32, default=(4, 4))},
    "RandomSizedCrop": {
        "min_max_height": UIOverride(kind="int_range", low=4, high=32, default=(16, 32)),
        "size": UIOverride(kind="int_pair", low=8, high=64, default=(32, 32)),
        "w2h_ratio": UIOverride(low=0.5, high=1.0),
    },
    "Resize": {"height": UIOverride(low=8, high=128, default=32), "width": UIOverride(low=8, high=128, default=32)},
    "LongestMaxSize": {"max_size": UIOverride(kind="int", low=8, high=128, default=32)},
    "SmallestMaxSize": {"max_size": UIOverride(kind="int", low=8, high=128, default=32)},
    "RandomScale": {"scale_limit": UIOverride(low=-0.5, high=1.0)},
    "ShiftScaleRotate": {
        "shift_limit": UIOverride(low=-0.5, high=0.5),
        "scale_limit": UIOverride(low=-0.5, high=1.0),
        "rotate_limit": UIOverride(low=-180.0, high=180.0, step=1.0),
    },
    "SafeRotate": {"limit": UIOverride(low=-180.0, high=180.0, step=1.0)},
    "RandomGridShuffle": {"grid": UIOverride(kind="int_pair", low=1, high=8)},
    "ChannelDropout": {"channel_drop_range": UIOverride(high=2), "fill": UIOverride(low=0.0, high=255.0, step=1.0)},
    "RandomGamma": {"gamma_limit": UIOverride(high=300.0, step=1.0)},
    "FancyPCA": {"alpha": UIOverride(high=1.0)},
    "PlasmaBrightnessContrast": {"plasma_size": UIOverride(high=512), "roughness": UIOverride(high=5.0)},
    "PlasmaShadow": {"roughness": UIOverride(high=5.0)},
    "ChromaticAberration": {
        # cv2.remap knows no INTER_AREA / INTER_LINEAR_EXACT / INTER_NEAREST_EXACT
        "interpolation": UIOverride(choices=(0, 1, 2, 4)),
        "primary_distortion_limit": UIOverride(low=-0.5, high=0.5),
        "secondary_distortion_limit": UIOverride(low=-0.5, high=0.5),
    },
    # odd kernel sizes only (field validators): step 2 from an odd low
    "RandomCropFromBorders": {  # left + right and top + bottom must not exceed 1
        "crop_left": UIOverride(high=0.5),
        "crop_right": UIOverride(high=0.5),
        "crop_top": UIOverride(high=0.5),
        "crop_bottom": UIOverride(high=0.5),
    },
    "HEStain": {
        "method": UIOverride(choices=("random_preset", "vahadane", "macenko")),
        "intensity_scale_range": UIOverride(high=2.0),
    },
    "Downscale": {"scale_range": UIOverride(low=0.05)},
    "FDA": {"beta_limit": UIOverride(high=0.5)},
    "UnsharpMask": {
        "blur_limit": UIOverride(low=3, high=15, step=2),
        "sigma_limit": UIOverride(low=0.0, high=5.0, default=(0.0, 0.0)),
    },
    "Emboss": {"strength": UIOverride(high=2.0)},
    "RingingOvershoot": {"blur_limit": UIOverride(low=3, high=15, step=2), "cutoff": UIOverride(low=0.01)},
    "MultiplicativeNoise": {"multiplier": UIOverride(high=2.0)},
    "ISONoise": {"intensity": UIOverride(high=1.0)},
    "ShotNoise": {"scale_range": UIOverride(low=0.01, high=1.0)},  # 0 divides by zero
    "Blur": {"blur_limit": UIOverride(low=3, high=15, step=2)},
    "MedianBlur": {"blur_limit": UIOverride(low=3, high=15, step=2)},
    "AdvancedBlur": {
        "blur_limit": UIOverride(low=3, high=15, step=2),
        "sigma_x_limit": UIOverride(low=0.1, high=5.0),
        "sigma_y_limit": UIOverride(low=0.1, high=5.0),
        "rotate_limit": UIOverride(low=-180.0, high=180.0, step=1.0),
        "noise_limit": UIOverride(low=0.1, high=2.0),
    },
    "GlassBlur": {
        "sigma": UIOverride(low=0.1, high=3.0),
        "max_delta": UIOverride(high=8),
        "iterations": UIOverride(high=5),
    },
    "Defocus": {"radius": UIOverride(kind="int_range", high=10), "alias_blur": UIOverride(low=0.0, high=1.0)},
    "ZoomBlur": {"max_factor": UIOverride(high=2.0), "step_factor": UIOverride(low=0.001, high=0.1, step=0.001)},
    "Superpixels": {
        "n_segments": UIOverride(kind="int_range", high=256),
        "max_size": UIOverride(low=32, high=512),
    },
    "Morphological": {"scale": UIOverride(kind="int_range", low=1, high=7)},
    # Erasing fails (Albumentations 2.0.8) when no hole fits: scale above min(ratio) or 1 / max(ratio) of the image
    "Erasing": {"scale": UIOverride(low=0.01, high=0.3, default=(0.02, 0.25)), "ratio": UIOverride(low=0.1, high=10.0)},
    "XYMasking": {
        "num_masks_x": UIOverride(low=0, high=8, default=(1, 2)),
        "num_masks_y": UIOverride(low=0, high=8, default=(1, 2)),
        "mask_x_length": UIOverride(low=0, high=32, default=(2, 6)),
        "mask_y_length": UIOverride(low=0, high=32, default=(2, 6)),
    },
    "FrequencyMasking": {"freq_mask_param": UIOverride(high=32, default=8)},
    "TimeMasking": {"time_mask_param": UIOverride(high=32, default=8)},
    "GridElasticDeform": {
        "num_grid_xy": UIOverride(kind="int_pair", low=1, high=16, default=(4, 4)),
        "magnitude": UIOverride(high=50, default=10),
    },
    "PiecewiseAffine": {
        "scale": UIOverride(low=0.0, high=0.2),
        "nb_rows": UIOverride(low=2, high=8),
        "nb_cols": UIOverride(low=2, high=8),
    },
    "ThinPlateSpline": {"num_control_points": UIOverride(high=8)},
    "RandomRain": {
        "drop_width": UIOverride(high=5),
        "drop_color": UIOverride(kind="colour"),
        "blur_value": UIOverride(high=15),
    },
    "RandomSnow": {"brightness_coeff": UIOverride(high=5.0)},
    "RandomSunFlare": {
        "src_radius": UIOverride(high=64, default=16),
        "num_flare_circles_range": UIOverride(high=20),
    },
    "RandomShadow": {"num_shadows_limit": UIOverride(high=5), "shadow_dimension": UIOverride(high=10)},
    "RandomGravel": {"number_of_patches": UIOverride(high=10)},
    "Spatter": {"gauss_sigma": UIOverride(low=0.0, high=5.0)},
}

# Registry: name -> (class, UI category). Explicit, so the UI lists exactly what the tests cover: every Albumentations
# 2.0.8 transform that applies to one RGB image (``OMITTED`` lists the others, with the reason).
CATALOGUE: dict[str, tuple[type[A.BasicTransform], str]] = {
    "PadIfNeeded": (A.PadIfNeeded, "crop & pad"),
    "RandomCrop": (A.RandomCrop, "crop & pad"),
    "RandomResizedCrop": (A.RandomResizedCrop, "crop & pad"),
    "CenterCrop": (A.CenterCrop, "crop & pad"),
    "Crop": (A.Crop, "crop & pad"),
    "CropAndPad": (A.CropAndPad, "crop & pad"),
    "Pad": (A.Pad, "crop & pad"),
    "RandomCropFromBorders": (A.RandomCropFromBorders, "crop & pad"),
    "RandomSizedCrop": (A.RandomSizedCrop, "crop & pad"),
    "Resize": (A.Resize, "crop & pad"),
    "LongestMaxSize": (A.LongestMaxSize, "crop & pad"),
    "SmallestMaxSize": (A.SmallestMaxSize, "crop & pad"),
    "RandomScale": (A.RandomScale, "crop & pad"),
    "HorizontalFlip": (A.HorizontalFlip, "geometric"),
    "VerticalFlip": (A.VerticalFlip, "geometric"),
    "Transpose": (A.Transpose, "geometric"),
    "RandomRotate90": (A.RandomRotate90, "geometric"),
    "D4": (A.D4, "geometric"),
    "SquareSymmetry": (A.SquareSymmetry, "geometric"),
    "Affine": (A.Affine, "geometric"),
    "ShiftScaleRotate": (A.ShiftScaleRotate, "geometric"),
    "Rotate": (A.Rotate, "geometric"),
    "SafeRotate": (A.SafeRotate, "geometric"),
    "Perspective": (A.Perspective, "geometric"),
    "RandomGridShuffle": (A.RandomGridShuffle, "geometric"),
    "TimeReverse": (A.TimeReverse, "geometric"),
    "NoOp": (A.NoOp, "geometric"),
    "RandomBrightnessContrast": (A.RandomBrightnessContrast, "colour"),
    "HueSaturationValue": (A.HueSaturationValue, "colour"),
    "ColorJitter": (A.ColorJitter, "colour"),
    "RGBShift": (A.RGBShift, "colour"),
    "ToGray": (A.ToGray, "colour"),
    "ToSepia": (A.ToSepia, "colour"),
    "CLAHE": (A.CLAHE, "colour"),
    "Equalize": (A.Equalize, "colour"),
    "AutoContrast": (A.AutoContrast, "colour"),
    "Posterize": (A.Posterize, "colour"),
    "Solarize": (A.Solarize, "colour"),
    "InvertImg": (A.InvertImg, "colour"),
    "ChannelShuffle": (A.ChannelShuffle, "colour"),
    "ChannelDropout": (A.ChannelDropout, "colour"),
    "RandomGamma": (A.RandomGamma, "colour"),
    "RandomToneCurve": (A.RandomToneCurve, "colour"),
    "FancyPCA": (A.FancyPCA, "colour"),
    "PlanckianJitter": (A.PlanckianJitter, "colour"),
    "HEStain": (A.HEStain, "colour"),
    "Illumination": (A.Illumination, "colour"),
    "PlasmaBrightnessContrast": (A.PlasmaBrightnessContrast, "colour"),
    "PlasmaShadow": (A.PlasmaShadow, "colour"),
    "ChromaticAberration": (A.ChromaticAberration, "colour"),
    "Sharpen": (A.Sharpen, "blur & noise"),
    "UnsharpMask": (A.UnsharpMask, "blur & noise"),
    "Emboss": (A.Emboss, "blur & noise"),
    "RingingOvershoot": (A.RingingOvershoot, "blur & noise"),
    "GaussNoise": (A.GaussNoise, "blur & noise"),
    "AdditiveNoise": (A.AdditiveNoise, "blur & noise"),
    "MultiplicativeNoise": (A.MultiplicativeNoise, "blur & noise"),
    "ISONoise": (A.ISONoise, "blur & noise"),
    "ShotNoise": (A.ShotNoise, "blur & noise"),
    "SaltAndPepper": (A.SaltAndPepper, "blur & noise"),
    "GaussianBlur": (A.GaussianBlur, "blur & noise"),
    "Blur": (A.Blur, "blur & noise"),
    "MedianBlur": (A.MedianBlur, "blur & noise"),
    "MotionBlur": (A.MotionBlur, "blur & noise"),
    "AdvancedBlur": (A.AdvancedBlur, "blur & noise"),
    "GlassBlur": (A.GlassBlur, "blur & noise"),
    "Defocus": (A.Defocus, "blur & noise"),
    "ZoomBlur": (A.ZoomBlur, "blur & noise"),
    "Downscale": (A.Downscale, "blur & noise"),
    "ImageCompression": (A.ImageCompression, "blur & noise"),
    "Superpixels": (A.Superpixels, "blur & noise"),
    "Morphological": (A.Morphological, "blur & noise"),
    "CoarseDropout": (A.CoarseDropout, "dropout"),
    "GridDropout": (A.GridDropout, "dropout"),
    "Erasing": (A.Erasing, "dropout"),
    "PixelDropout": (A.PixelDropout, "dropout"),
    "XYMasking": (A.XYMasking, "dropout"),
    "FrequencyMasking": (A.FrequencyMasking, "dropout"),
    "TimeMasking": (A.TimeMasking, "dropout"),
    "ElasticTransform": (A.ElasticTransform, "distortion"),
    "GridDistortion": (A.GridDistortion, "distortion"),
    "OpticalDistortion": (A.OpticalDistortion, "distortion"),
    "GridElasticDeform": (A.GridElasticDeform, "distortion"),
    "PiecewiseAffine": (A.PiecewiseAffine, "distortion"),
    "ThinPlateSpline": (A.ThinPlateSpline, "distortion"),
    "RandomFog": (A.RandomFog, "weather & light"),
    "RandomRain": (A.RandomRain, "weather & light"),
    "RandomSnow": (A.RandomSnow, "weather & light"),
    "RandomSunFlare": (A.RandomSunFlare, "weather & light"),
    "RandomShadow": (A.RandomShadow, "weather & light"),
    "RandomGravel": (A.RandomGravel, "weather & light"),
    "Spatter": (A.Spatter, "weather & light"),
    # these match the image to a second one, which the caller passes (``references``): another image of the data
    "FDA": (A.FDA, "second image"),
    "HistogramMatching": (A.HistogramMatching, "second image"),
    "PixelDistributionAdaptation": (A.PixelDistributionAdaptation, "second image"),
}

# Albumentations 2.0.8 transforms the Lab leaves out, and why (docs/augmentation-lab.md lists them).
OMITTED: dict[str, str] = {
    "AtLeastOneBBoxRandomCrop": "needs bounding boxes",
    "BBoxSafeRandomCrop": "needs bounding boxes",
    "RandomCropNearBBox": "needs a bounding box (cropping_bbox)",
    "RandomSizedBBoxSafeCrop": "needs bounding boxes",
    "ConstrainedCoarseDropout": "drops holes inside mask or box regions: needs a mask or bounding boxes",
    "CropNonEmptyMaskIfExists": "crops around a mask's objects: needs a mask",
    "MaskDropout": "drops mask objects: needs a mask",
    "Mosaic": "tiles several annotated images given in mosaic_metadata (image, mask, boxes per item)",
    "OverlayElements": "pastes elements given per call in overlay_metadata (image, mask and box of each)",
    "TextImage": "renders text boxes given in textimage_metadata with a font file",
    "Lambda": "runs arbitrary code: it cannot be exported or re-imported",
    "Normalize": "returns float32; the Lab's contract is uint8 RGB (the model's own preprocessing normalises)",
    "ToFloat": "returns float32; the Lab's contract is uint8 RGB",
    "FromFloat": "expects a float32 image",
    "ToRGB": "expects a one-channel image; the Lab's images are already RGB",
    "ToTensorV2": "returns a torch tensor, not an image",
    "CenterCrop3D": "3-D volumes only",
    "CoarseDropout3D": "3-D volumes only",
    "CubicSymmetry": "3-D volumes only",
    "Pad3D": "3-D volumes only",
    "PadIfNeeded3D": "3-D volumes only",
    "RandomCrop3D": "3-D volumes only",
    "ToTensor3D": "3-D volumes only",
}

_CV2_LABELS: dict[str, dict[int, str]] = {
    "interpolation": {
        getattr(cv2, n): n
        for n in (
            "INTER_NEAREST",
            "INTER_NEAREST_EXACT",
            "INTER_LINEAR",
            "INTER_CUBIC",
            "INTER_AREA",
            "INTER_LANCZOS4",
            "INTER_LINEAR_EXACT",
        )
    },
    "border_mode": {
        getattr(cv2, n): n
        for n in ("BORDER_CONSTANT", "BORDER_REPLICATE", "BORDER_REFLECT", "BORDER_WRAP", "BORDER_REFLECT_101")
    },
}


def _union_members(annotation: Any) -> list[Any]:
    """The members of a ``Union`` (or ``X | Y``) without ``None``; a non-union gives itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for m in typing.get_args(annotation) if m is not type(None)]
    return [annotation]


def _infer_kind(annotation: Any) -> ParamKind | None:
    """The kind a schema annotation maps to, or None when the lab cannot edit it without an override."""
    members = _union_members(annotation)
    tuples = [typing.get_args(m) for m in members if typing.get_origin(m) is tuple]
    if any(args and args[-1] is Ellipsis for args in tuples):
        return "colour"  # ``fill: tuple[float, ...] | float`` (and CoarseDropout's extra fill modes)
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        return "choice"
    if members == [bool]:
        return "bool"
    if members == [int]:
        return "int"
    if members == [float]:
        return "float"
    if (float, float) in tuples:  # a float pair wins over an int pair: the lab edits fractions, not pixels
        return "range"
    if (int, int) in tuples:
        return "int_range"
    return None


def schema_bounds(field_info: Any) -> tuple[float | None, float | None, bool, bool]:
    """``(low, high, low_exclusive, high_exclusive)`` from ``Field(ge/gt/le/lt)`` or ``check_range_bounds``."""
    low = high = None
    low_open = high_open = False
    for meta in field_info.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            low, low_open = meta.gt, True
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
        elif isinstance(meta, annotated_types.Lt):
            high, high_open = meta.lt, True
        elif callable(getattr(meta, "func", None)):
            # check_range_bounds(min_val, max_val, ...) keeps its bounds in the validator's closure
            bound = inspect.getclosurevars(meta.func).nonlocals
            if "min_val" in bound:
                low, low_open = bound["min_val"], not bound.get("min_inclusive", True)
                high, high_open = bound.get("max_val"), not bound.get("max_inclusive", True)
    return low, high, low_open, high_open


def _nice_step(low: float, high: float, kind: ParamKind) -> float:
    """About 100 slider positions, on a power of ten (ints: 1)."""
    if kind in ("int", "int_range", "int_pair"):
        return 1
    return 10.0 ** round(math.log10((high - low) / 100)) if high > low else 0.01


def _intersect(schema: float | None, ui: float | None, pick: Callable[[float, float], float]) -> float | None:
    return ui if schema is None else schema if ui is None else pick(schema, ui)


def _derive_param(name: str, field_info: Any, default: Any, ui: UIOverride) -> ParamSpec | None:
    """One ``ParamSpec`` from the schema field, the signature default and the override; None if underivable."""
    kind = ui.kind or _infer_kind(field_info.annotation)
    if ui.default is not KEEP:
        default = ui.default
    if kind is None or default is inspect.Parameter.empty:
        return None
    if kind == "choice":
        choices = typing.get_args(_union_members(field_info.annotation)[0])
        choices = choices if ui.choices is None else tuple(c for c in choices if c in ui.choices)
        names = _CV2_LABELS.get(name, {})
        labels = tuple(names.get(c, str(c)) if not isinstance(c, str) else c for c in choices)
        return ParamSpec(name, kind, default, choices=choices, choice_labels=labels)
    if default is None:
        return None  # "None = automatic" numbers need an explicit default in UI_OVERRIDES (or an exclusion)
    if kind == "bool":
        return ParamSpec(name, kind, bool(default))
    if kind == "colour":
        rgb = tuple(int(v) for v in (default if isinstance(default, tuple) else (default,) * 3))
        return ParamSpec(name, kind, rgb, low=0, high=255, step=1)
    s_low, s_high, low_open, high_open = schema_bounds(field_info)
    low, high = _intersect(s_low, ui.low, max), _intersect(s_high, ui.high, min)
    if low is None or high is None:
        return None  # an unbounded number needs UI bounds in UI_OVERRIDES
    step = ui.step or _nice_step(low, high, kind)
    if low_open and low == s_low:
        low += step
    if high_open and high == s_high:
        high -= step
    is_int = kind in ("int", "int_range", "int_pair")
    cast = int if is_int else float
    low, high, step = cast(low), cast(high), cast(step)
    default = tuple(cast(v) for v in default) if isinstance(default, tuple) else cast(default)
    return ParamSpec(name, kind, default, low=low, high=high, step=step)


def _derive_transform(name: str, cls: type[A.BasicTransform], category: str) -> TransformSpec:
    signature = inspect.signature(cls.__init__).parameters
    fields = cls.InitSchema.model_fields
    excluded = GLOBAL_EXCLUDED.keys() | EXCLUDED.get(name, {}).keys()
    overrides = UI_OVERRIDES.get(name, {})
    params = []
    for pname, parameter in signature.items():
        if pname == "self" or pname in excluded or pname not in fields:
            continue  # a signature name without a schema field is caught by the drift tests
        spec = _derive_param(pname, fields[pname], parameter.default, overrides.get(pname, UIOverride()))
        if spec is not None:  # an underivable one is missing from the catalogue: the drift tests name it
            params.append(spec)
    doc = " ".join(inspect.cleandoc(cls.__doc__ or name).split("\n\n")[0].split())  # the first paragraph
    default_p = signature["p"].default if "p" in signature else 1.0
    declared = cls._targets if isinstance(cls._targets, tuple) else (cls._targets,)
    targets = tuple(str(getattr(t, "value", t)) for t in declared)
    key = signature["metadata_key"].default if issubclass(cls, BaseDomainAdaptation) else None
    return TransformSpec(name, cls, category, doc, float(default_p), tuple(params), targets, key)


TRANSFORMS: dict[str, TransformSpec] = {
    name: _derive_transform(name, cls, category) for name, (cls, category) in CATALOGUE.items()
}


def get_transform_spec(name: str) -> TransformSpec:
    """The catalogued transform ``name``; raises ``PipelineError`` naming the valid transforms."""
    spec = TRANSFORMS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise PipelineError(f"unknown transform '{name}'; choose one of: {', '.join(TRANSFORMS)}", transform=name)
    return spec


_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")


class _ShortRepr(reprlib.Repr):
    """``reprlib``'s short repr, and a huge integer by its length: ``repr`` of one past 4,300 digits raises, and a
    400-digit one is no use in a message."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 64:  # str() of one of up to 4,300 digits is cheap; above it raises
            digits = len(str(abs(x))) if x.bit_length() < 14_000 else int(x.bit_length() * math.log10(2)) + 1
            return f"<an integer of about {digits:,} digits>"
        return repr(x)


_SHORT = _ShortRepr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 40, 40, 6, 6


def shown(value: Any) -> str:
    """``value`` for a message, cut short: nested containers to 3 levels, strings to 40 characters, a huge integer by
    its number of digits (an untrusted file or link can hold any of them)."""
    return _SHORT.repr(value)


def _as_number(value: Any, integer: bool) -> float | int | None:
    """``value`` as a finite int/float, or None when it is not one (bools are not numbers here). A Python int is
    kept as it is, however large (``float()`` of a 400-digit one raises ``OverflowError``): bounds are checked first."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if not math.isfinite(value):
        return None
    if integer:
        return int(value) if float(value).is_integer() else None
    return float(value)


def _check_number(spec: ParamSpec, value: Any, integer: bool) -> float | int:
    """One bounded number, or a ValueError whose text completes "<transform>.<param>: ..."."""
    number = _as_number(value, integer)
    if number is None:
        raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {shown(value)}")
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{shown(number)} is outside the allowed range [{spec.low}, {spec.high}]")
    if integer and spec.step and spec.step > 1 and (number - spec.low) % spec.step:
        raise ValueError(f"{number!r} is not one of {spec.low}, {spec.low + spec.step}, ... (step {spec.step})")
    return number if integer else float(number)


def normalise_value(spec: ParamSpec, value: Any) -> Any:
    """The canonical value (tuples, Python scalars) for ``spec``, or a ValueError saying what is wrong."""
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"expected true or false, got {shown(value)}")
        return bool(value)
    if kind == "choice":
        for choice in spec.choices:
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
        raise ValueError(f"{shown(value)} is not one of {', '.join(map(repr, spec.choices))}")
    if kind == "colour":
        if isinstance(value, str) and _HEX_COLOUR.fullmatch(value):
            return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"expected an RGB triple like (0, 0, 0) or '#000000', got {shown(value)}")
        return tuple(_check_number(spec, v, integer=True) for v in value)
    if kind in ("float", "int"):
        return _check_number(spec, value, integer=kind == "int")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"expected a pair (low, high), got {shown(value)}")
    pair = tuple(_check_number(spec, v, integer=kind != "range") for v in value)
    if kind != "int_pair" and pair[0] > pair[1]:
        raise ValueError(f"reversed range {pair!r}: the first value must not exceed the second")
    return pair
