"""Tests of camlib.augment: catalogue-vs-schema drift, every transform at its bounds on real CIFAR-10 images,
seeded pipelines (reproducible, thread-safe, global RNGs untouched), error messages, export/import round trips."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import random
import re
import threading
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.core.serialization import serialize_enum
from PIL import Image

from camlib import augment
from camlib.augment import (
    CIFAR10_TRAIN_PIPELINE,
    TRANSFORMS,
    GridError,
    ParamSpec,
    Pipeline,
    PipelineError,
    PipelineStep,
    augment_grid,
    augment_image,
    build_pipeline,
    catalogue,
    compose_to_dict,
    pipeline_from_dict,
    pipeline_from_json,
    pipeline_from_yaml,
    pipeline_to_dict,
    pipeline_to_json,
    pipeline_to_python,
    pipeline_to_yaml,
    tile_grid,
    validate_step,
)
from camlib.cifar import load_cifar10
from camlib.errors import CamlibError, InvalidImageError

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"
REQUIRED = {
    "PadIfNeeded",
    "RandomCrop",
    "HorizontalFlip",
    "Affine",
    "CoarseDropout",
    "RandomBrightnessContrast",
    "HueSaturationValue",
    "ColorJitter",
    "RGBShift",
    "ToGray",
    "CLAHE",
    "Equalize",
    "Posterize",
    "Solarize",
    "Sharpen",
    "GaussNoise",
    "GaussianBlur",
    "MotionBlur",
    "ImageCompression",
    "ChannelShuffle",
    "GridDropout",
    "Perspective",
    "ElasticTransform",
    "GridDistortion",
    "OpticalDistortion",
    "RandomResizedCrop",
}

# Albumentations 2.0.8 advises at construction that a few transforms have a more general form; the Lab offers both
pytestmark = [
    pytest.mark.filterwarnings("ignore:.* is a specialized version of XYMasking:UserWarning"),
    pytest.mark.filterwarnings("ignore:ShiftScaleRotate is a special case of Affine:UserWarning"),
    pytest.mark.filterwarnings("ignore:TimeReverse is an alias for HorizontalFlip:UserWarning"),
    pytest.mark.filterwarnings("ignore:This augmenter is very slow:UserWarning"),
]

# Albumentations 2.0.8's to_dict writes a few constructor-internal names for PadIfNeeded and RGBShift, which from_dict
# then warns about and ignores; the pixels still round-trip, which is what the tests check.
IGNORE_TO_DICT_EXTRAS = pytest.mark.filterwarnings("ignore:Argument\\(s\\) .* are not valid for transform:UserWarning")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Ten real CIFAR-10 test images, one per class."""
    if not DATA.is_dir():
        pytest.skip(f"the shared CIFAR-10 image-folder copy is not at {DATA}")
    return load_cifar10(DATA, "test", limit=10).images


def one_step(name: str, params: dict | None = None, p: float = 1.0, seed: int = 0) -> Pipeline:
    return Pipeline((PipelineStep(name, params or {}, p=p),), seed=seed)


def rng_state() -> tuple:
    return np.random.get_state()[1].tobytes(), random.getstate(), torch.get_rng_state().numpy().tobytes()


def transform_dict(transform: A.BasicTransform) -> dict:
    return compose_to_dict(A.Compose([transform]))["transform"]["transforms"][0]


def signature_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


# ---------------------------------------------------------------------------------------------------- catalogue drift


def test_catalogue_covers_the_required_transforms():
    assert len(TRANSFORMS) >= 25
    assert TRANSFORMS.keys() >= REQUIRED
    assert all(spec.name == name and spec.transform is getattr(A, name) for name, spec in TRANSFORMS.items())


def test_every_override_names_a_real_schema_field():
    for name, overrides in catalogue.UI_OVERRIDES.items():
        cls = catalogue.CATALOGUE[name][0]
        for param in overrides:
            assert param in cls.InitSchema.model_fields, f"{name}.{param} is not a schema field any more"
            assert param in signature_params(cls), f"{name}.{param} is not an __init__ argument any more"


def test_every_exclusion_names_a_real_parameter():
    for name, excluded in catalogue.EXCLUDED.items():
        for param in excluded:
            assert param in signature_params(catalogue.CATALOGUE[name][0]), f"{name}.{param} no longer exists"


@pytest.mark.parametrize("name", TRANSFORMS)
def test_catalogued_params_exist_in_signature_and_schema(name):
    spec = TRANSFORMS[name]
    for param in spec.params:
        assert param.name in signature_params(spec.transform)
        assert param.name in spec.transform.InitSchema.model_fields


@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_init_argument_is_catalogued_or_excluded(name):
    # a parameter added (or made underivable) by an upgrade must be decided on, not silently left out
    spec = TRANSFORMS[name]
    excluded = catalogue.GLOBAL_EXCLUDED.keys() | catalogue.EXCLUDED.get(name, {}).keys()
    assert signature_params(spec.transform) - excluded == {p.name for p in spec.params}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_bounds_lie_within_the_schema_and_defaults_within_bounds(name):
    spec = TRANSFORMS[name]
    for param in spec.params:
        if param.kind in ("float", "int", "range", "int_range", "int_pair"):
            low, high, _, _ = catalogue.schema_bounds(spec.transform.InitSchema.model_fields[param.name])
            assert low is None or param.low >= low, (name, param)
            assert high is None or param.high <= high, (name, param)
            assert param.low < param.high and param.step > 0
        assert catalogue.normalise_value(param, param.default) == param.default, (name, param)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_defaults_equal_the_library_defaults_unless_overridden(name):
    spec = TRANSFORMS[name]
    overrides = catalogue.UI_OVERRIDES.get(name, {})
    # colours are (r, g, b) where the library's default is the scalar 0: same pixels, other spelling
    kept = {
        p.name: p.default
        for p in spec.params
        if p.kind == "colour" or overrides.get(p.name, catalogue.UIOverride()).default is not catalogue.KEEP
    }
    assert transform_dict(spec.transform(**spec.defaults())) == transform_dict(spec.transform(**kept))


def test_derivation_reads_the_schema_metadata():
    assert TRANSFORMS["Sharpen"].param("alpha") == ParamSpec("alpha", "range", (0.2, 0.5), 0.0, 1.0, 0.01)
    assert TRANSFORMS["GaussNoise"].param("noise_scale_factor").low == 0.01  # Field(gt=0) -> first valid step
    assert TRANSFORMS["ImageCompression"].param("quality_range").low == 1  # check_range_bounds(1, 100)
    border = TRANSFORMS["Affine"].param("border_mode")
    assert border.kind == "choice" and border.choices == (0, 1, 2, 3, 4)
    assert border.choice_labels[0] == "BORDER_CONSTANT"
    assert TRANSFORMS["PadIfNeeded"].param("fill").kind == "colour"
    with pytest.raises(PipelineError, match="no parameter 'bogus'"):
        TRANSFORMS["Affine"].param("bogus")


# ---------------------------------------------------------------------------------------------------- every transform


def bound_variants(param: ParamSpec) -> list:
    if param.kind == "bool":
        return [False, True]
    if param.kind == "choice":
        return list(param.choices)
    if param.kind == "colour":
        return [(0, 0, 0), (255, 255, 255)]
    if param.kind in ("float", "int"):
        return [param.low, param.high]
    pairs = [(param.low, param.low), (param.high, param.high)]
    return (
        pairs + [(param.low, param.high)]
        if param.kind != "int_pair"
        else pairs + [(param.low, param.high), (param.high, param.low)]
    )


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.bad_input(55)
def test_transform_builds_and_runs_at_defaults_and_bounds(name, images):
    spec = TRANSFORMS[name]
    variants = [{}] + [{param.name: value} for param in spec.params for value in bound_variants(param)]
    for params in variants:
        compose = build_pipeline(one_step(name, params, seed=3))
        assert compose.strict and compose.seed == 3
        for image in images[:3]:
            out = augment_image(compose, image, references=images[7:])["image"]
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, (name, params, out.shape)


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.bad_input(58)
def test_transform_is_reproducible_and_leaves_global_rngs_alone(name, images):
    before = rng_state()
    first = augment_grid(images, one_step(name, seed=11), rows=2, cols=3)
    second = augment_grid(images, one_step(name, seed=11), rows=2, cols=3)
    assert rng_state() == before
    assert first.tiles.tobytes() == second.tiles.tobytes()
    assert first.applied == second.applied
    json.dumps(first.applied)  # JSON-friendly


@IGNORE_TO_DICT_EXTRAS
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_round_trips_through_albumentations_dict(name, images):
    compose = build_pipeline(one_step(name, seed=5))
    if TRANSFORMS[name].reference_key is None:
        document = A.to_dict(compose)
        assert json.dumps(compose_to_dict(compose)) == json.dumps(serialize_enum(document))
    else:  # Albumentations refuses these (a second image per call); camlib writes their settings, which load back
        with pytest.raises(NotImplementedError, match="cannot be reliably serialized"):
            A.to_dict(compose)
        document = compose_to_dict(compose)
    restored = A.from_dict(document)
    restored.set_random_seed(5)  # Albumentations does not serialise the seed
    for image in images[:4]:
        before = augment_image(compose, image, references=images[7:])["image"]
        after = augment_image(restored, image, references=images[7:])["image"]
        assert np.array_equal(before, after)


# ---------------------------------------------------------------------------------------------------- exact values


def test_horizontal_flip_is_exact_and_recorded(images):
    result = augment_grid(images, one_step("HorizontalFlip"), rows=2, cols=2, indices=[0, 1, 2, 3])
    for tile, index in zip(result.tiles, result.indices, strict=True):
        assert np.array_equal(tile, images[index][:, ::-1])
    assert result.applied[0] == ({"transform": "HorizontalFlip", "params": {"shape": [32, 32, 3]}},)


def test_invert_and_disabled_steps(images):
    pipeline = Pipeline(
        (PipelineStep("InvertImg"), PipelineStep("VerticalFlip", enabled=False), PipelineStep("ChannelShuffle", p=0.0))
    )
    result = augment_grid(images, pipeline, rows=1, cols=3, indices=[4, 5, 6])
    assert np.array_equal(result.tiles, 255 - images[[4, 5, 6]])
    assert [[a["transform"] for a in tile] for tile in result.applied] == [["InvertImg"]] * 3
    identity = augment_grid(
        images, Pipeline((PipelineStep("InvertImg", enabled=False),)), rows=1, cols=2, indices=[0, 1]
    )
    assert np.array_equal(identity.tiles, images[:2]) and identity.applied == ((), ())


def test_pad_and_crop_match_the_recorded_coordinates(images):
    steps = CIFAR10_TRAIN_PIPELINE.steps[:2]  # PadIfNeeded(40, 40) + RandomCrop(32, 32)
    result = augment_grid(images, Pipeline(steps, seed=9), rows=2, cols=4, indices=range(8))
    for tile, index, applied in zip(result.tiles, result.indices, result.applied, strict=True):
        pad, crop = applied[0]["params"], applied[1]["params"]
        assert (pad["pad_top"], pad["pad_left"]) == (4, 4)
        padded = np.zeros((40, 40, 3), np.uint8)
        padded[4:36, 4:36] = images[index]
        x1, y1, x2, y2 = crop["crop_coords"]
        assert np.array_equal(tile, padded[y1:y2, x1:x2])


def test_coarse_dropout_fills_the_recorded_hole_with_a_hex_colour(images):
    step = PipelineStep(
        "CoarseDropout",
        {
            "num_holes_range": (1, 1),
            "hole_height_range": (0.5, 0.5),
            "hole_width_range": (0.25, 0.25),
            "fill": "#ff8000",
        },
    )
    assert validate_step(step)["fill"] == (255, 128, 0)
    result = augment_grid(images, Pipeline((step,)), rows=1, cols=2, indices=[7, 8])
    for tile, index, applied in zip(result.tiles, result.indices, result.applied, strict=True):
        ((x1, y1, x2, y2),) = applied[0]["params"]["holes"]
        assert (y2 - y1, x2 - x1) == (16, 8)
        expected = images[index].copy()
        expected[y1:y2, x1:x2] = (255, 128, 0)
        assert np.array_equal(tile, expected)


# ---------------------------------------------------------------------------------------------------- grids and seeds


@pytest.mark.bad_input(58)
def test_same_seed_same_grid_other_seed_other_grid(images):
    first = augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=8, cols=8, seed=1)
    again = augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=8, cols=8, seed=1)
    other = augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=8, cols=8, seed=2)
    assert first.tiles.tobytes() == again.tiles.tobytes() and first.indices == again.indices
    assert first.tiles.tobytes() != other.tiles.tobytes()
    assert first.seed == 1 and augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=1, cols=1).seed == 0


@pytest.mark.bad_input(58)
def test_global_rngs_untouched_by_a_full_pipeline(images):
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    before = rng_state()
    names = list(TRANSFORMS)
    for start in range(0, len(names), augment.MAX_STEPS):  # every transform, in pipelines of the longest length
        everything = Pipeline(tuple(PipelineStep(name, p=0.5) for name in names[start : start + augment.MAX_STEPS]), 4)
        augment_grid(images, everything, rows=4, cols=4)
    assert rng_state() == before


@pytest.mark.bad_input(46)
def test_concurrent_threads_match_serial_results(images):
    jobs = [(CIFAR10_TRAIN_PIPELINE, seed) for seed in range(4)] + [
        (one_step("ElasticTransform"), 7),
        (one_step("GaussNoise"), 8),
    ]
    serial = [augment_grid(images, pipeline, rows=4, cols=4, seed=seed).tiles for pipeline, seed in jobs]
    results: dict[tuple[int, int], bytes] = {}
    barrier = threading.Barrier(len(jobs))

    def work(k: int) -> None:
        barrier.wait()  # start together so the runs really interleave
        for repeat in range(3):
            pipeline, seed = jobs[k]
            results[k, repeat] = augment_grid(images, pipeline, rows=4, cols=4, seed=seed).tiles.tobytes()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 * len(jobs)
    assert all(results[k, r] == serial[k].tobytes() for k in range(len(jobs)) for r in range(3))


def test_modes_and_indices(images):
    many = augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=3, cols=3)
    assert len(set(many.indices)) == 9 and many.tiles.shape == (9, 32, 32, 3)
    one = augment_grid(images, CIFAR10_TRAIN_PIPELINE, mode="one", rows=4, cols=4, indices=[3])
    assert one.indices == (3,) * 16 and len({t.tobytes() for t in one.tiles}) > 1
    cycled = augment_grid(images[:2], one_step("InvertImg"), rows=2, cols=2)
    assert cycled.indices == (0, 1, 0, 1)
    big = augment_grid(images, one_step("InvertImg"), rows=16, cols=16)
    assert big.tiles.shape == (256, 32, 32, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "some"}, "mode must be"),
        ({"rows": 0}, "rows must be"),
        ({"cols": 17}, "cols must be"),
        ({"rows": 2.0}, "rows must be"),
        ({"indices": [1, 2]}, "needs 4 image index"),
        ({"indices": [0, 1, 2, 10]}, "index 10 is out of range"),
        ({"mode": "one", "indices": [-1]}, "index -1 is out of range"),
    ],
)
@pytest.mark.bad_input(59)
def test_bad_grid_arguments(images, kwargs, message):
    with pytest.raises(GridError, match=message):
        augment_grid(images, CIFAR10_TRAIN_PIPELINE, **{"rows": 2, "cols": 2} | kwargs)


def test_size_changing_transforms_are_padded_to_a_common_size(images):
    resized = augment_grid(images, one_step("RandomResizedCrop", {"size": (20, 24)}), rows=1, cols=3)
    assert resized.tiles.shape == (3, 20, 24, 3) and set(resized.tile_shapes) == {(20, 24)}
    pipeline = one_step("Perspective", {"keep_size": False, "scale": (0.05, 0.3)}, seed=2)
    result = augment_grid(images, pipeline, rows=2, cols=4)
    assert len(set(result.tile_shapes)) > 1
    height, width = result.tiles.shape[1:3]
    assert (height, width) == tuple(max(s) for s in zip(*result.tile_shapes, strict=True))
    compose = build_pipeline(pipeline)  # the same draws, unpadded
    for tile, index, (h, w) in zip(result.tiles, result.indices, result.tile_shapes, strict=True):
        raw = compose(image=images[index])["image"]
        top, left = (height - h) // 2, (width - w) // 2
        assert np.array_equal(tile[top : top + h, left : left + w], raw)
        assert not tile[:top].any() and not tile[top + h :].any()


@pytest.mark.bad_input(57)
def test_works_on_any_image_size(images):
    photo = np.asarray(Image.fromarray(images[0]).resize((70, 45), Image.BICUBIC))  # (45, 70, 3)
    pipeline = Pipeline(
        tuple(
            PipelineStep(n, p=0.7)
            for n in ("Affine", "ColorJitter", "CoarseDropout", "GridDistortion", "Sharpen", "HorizontalFlip")
        )
    )
    result = augment_grid(photo, pipeline, mode="one", rows=3, cols=3)
    assert result.tiles.shape == (9, 45, 70, 3) and result.indices == (0,) * 9
    assert augment_grid(photo[:, :, 0], one_step("InvertImg"), rows=1, cols=1).tiles.shape == (1, 45, 70, 3)


@pytest.mark.bad_input(57, 59)
def test_bad_images_and_oversized_grids(images):
    with pytest.raises(InvalidImageError):
        augment_grid(images.astype(np.float32), CIFAR10_TRAIN_PIPELINE)
    with pytest.raises(InvalidImageError):
        augment_grid(np.zeros((2, 8, 8, 4), np.uint8), CIFAR10_TRAIN_PIPELINE)
    with pytest.raises(GridError, match="too large"):
        augment_grid(np.zeros((1, 1024, 1024, 3), np.uint8), CIFAR10_TRAIN_PIPELINE, rows=8, cols=8)


@pytest.mark.bad_input(56)
def test_a_crop_larger_than_the_image_is_a_pipeline_error(images):
    pipeline = one_step("RandomCrop", {"height": 64, "width": 64, "pad_if_needed": False})
    with pytest.raises(PipelineError, match="failed on a 32x32 image: Crop size"):
        augment_grid(images, pipeline, rows=1, cols=1)


# ---------------------------------------------------------------------------------------------------- invalid values


def raised(step: PipelineStep, seed: int = 0) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        build_pipeline(Pipeline((PipelineStep("HorizontalFlip"), step), seed=seed))
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, CamlibError) and isinstance(info.value, ValueError)
    return info.value


@pytest.mark.bad_input(53)
def test_reversed_range_names_transform_and_parameter():
    error = raised(PipelineStep("RandomBrightnessContrast", {"brightness_limit": (0.5, 0.1)}))
    assert str(error) == (
        "RandomBrightnessContrast.brightness_limit (step 2): reversed range (0.5, 0.1): "
        "the first value must not exceed the second"
    )
    assert (error.step, error.transform, error.param) == (1, "RandomBrightnessContrast", "brightness_limit")


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            PipelineStep("Sharpen", {"alpha": (0.2, 2.0)}),
            "Sharpen.alpha (step 2): 2.0 is outside the allowed range [0.0, 1.0]",
        ),
        (PipelineStep("Affine", {"bogus": 1}), "Affine.bogus (step 2): unknown parameter (editable: balanced_scale,"),
        (PipelineStep("Blurry"), "Blurry (step 2): unknown transform; choose one of: PadIfNeeded,"),
        (
            PipelineStep("HorizontalFlip", p=1.5),
            "HorizontalFlip.p (step 2): the probability must be in [0, 1], got 1.5",
        ),
        (
            PipelineStep("GaussNoise", {"std_range": "wide"}),
            "GaussNoise.std_range (step 2): expected a pair (low, high)",
        ),
        (
            PipelineStep("GaussNoise", {"std_range": (0.1, float("nan"))}),
            "GaussNoise.std_range (step 2): expected a number, got nan",
        ),
        (PipelineStep("Sharpen", {"kernel_size": True}), "Sharpen.kernel_size (step 2): expected an integer, got True"),
        (
            PipelineStep("MotionBlur", {"blur_limit": (3, 4)}),
            "MotionBlur.blur_limit (step 2): 4 is not one of 3, 5, ...",
        ),
        (PipelineStep("Affine", {"fit_output": "yes"}), "Affine.fit_output (step 2): expected true or false"),
        (PipelineStep("Affine", {"border_mode": 9}), "Affine.border_mode (step 2): 9 is not one of 0, 1, 2, 3, 4"),
        (PipelineStep("PadIfNeeded", {"fill": (0, 0)}), "PadIfNeeded.fill (step 2): expected an RGB triple"),
    ],
)
@pytest.mark.bad_input(54)
def test_invalid_values_give_one_readable_line(step, expected):
    assert str(raised(step)).startswith(expected)


@pytest.mark.bad_input(54)
def test_schema_errors_are_mapped_to_one_line(monkeypatch):
    # widen the lab's bound past the schema's so that pydantic, not the lab, refuses the value
    spec = TRANSFORMS["Sharpen"]
    wide = tuple(dataclasses.replace(p, high=5.0) if p.name == "alpha" else p for p in spec.params)
    monkeypatch.setitem(TRANSFORMS, "Sharpen", dataclasses.replace(spec, params=wide))
    error = raised(PipelineStep("Sharpen", {"alpha": (0.5, 3.0)}))
    assert str(error) == "Sharpen.alpha (step 2): All values in (0.5, 3.0) must be >= 0 and <= 1"
    assert error.param == "alpha"


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "7"])
def test_bad_seeds(seed):
    with pytest.raises(PipelineError, match="seed must be an integer"):
        build_pipeline(Pipeline((), seed=seed))


def test_too_many_steps():
    with pytest.raises(PipelineError, match="at most 32 steps"):
        build_pipeline(Pipeline((PipelineStep("HorizontalFlip"),) * 33))


def test_pipelines_are_hashable_values():
    copy = Pipeline(tuple(dataclasses.replace(step) for step in EDITED.steps), 1234)
    assert copy == EDITED and hash(copy) == hash(EDITED) and copy.steps[0] is not EDITED.steps[0]
    assert len({CIFAR10_TRAIN_PIPELINE, Pipeline(CIFAR10_TRAIN_PIPELINE.steps), EDITED}) == 2


@pytest.mark.bad_input(46)
def test_build_returns_a_fresh_compose_each_time():
    first, second = build_pipeline(CIFAR10_TRAIN_PIPELINE), build_pipeline(CIFAR10_TRAIN_PIPELINE)
    assert first is not second and first.transforms[0] is not second.transforms[0]
    assert first.save_applied_params and first.strict


# ---------------------------------------------------------------------------------------------------- export / import


EDITED = Pipeline(
    CIFAR10_TRAIN_PIPELINE.steps
    + (
        PipelineStep("ToGray", {"method": "average"}, p=0.3, enabled=False),
        PipelineStep("Sharpen", {"alpha": [0.1, 0.4]}, p=0.25),
    ),
    seed=1234,
)


def canonical(pipeline: Pipeline) -> Pipeline:
    return Pipeline(
        tuple(dataclasses.replace(s, params=validate_step(s, i)) for i, s in enumerate(pipeline.steps)), pipeline.seed
    )


@pytest.mark.parametrize(
    ("dump", "load"), [(pipeline_to_json, pipeline_from_json), (pipeline_to_yaml, pipeline_from_yaml)]
)
def test_export_import_round_trip_is_byte_identical(images, dump, load):
    restored = load(dump(EDITED))
    assert restored == canonical(EDITED)
    assert restored.steps[-2].enabled is False and restored.seed == 1234
    before = augment_grid(images, EDITED, rows=4, cols=4)
    after = augment_grid(images, restored, rows=4, cols=4)
    assert before.tiles.tobytes() == after.tiles.tobytes() and before.applied == after.applied
    assert load(dump(restored)) == restored


@IGNORE_TO_DICT_EXTRAS
@pytest.mark.parametrize("data_format", ["json", "yaml"])
def test_exported_files_load_with_albumentations(images, tmp_path, data_format):
    path = tmp_path / f"pipeline.{data_format}"
    path.write_text(pipeline_to_json(EDITED) if data_format == "json" else pipeline_to_yaml(EDITED))
    compose = A.load(str(path), data_format=data_format)
    compose.set_random_seed(EDITED.seed)
    result = augment_grid(images, EDITED, rows=3, cols=3)
    tiles = np.stack([compose(image=images[i])["image"] for i in result.indices])
    assert tiles.tobytes() == result.tiles.tobytes()
    assert [t.__class__.__name__ for t in compose.transforms] == [s.transform for s in EDITED.steps if s.enabled]


def test_python_snippet_rebuilds_the_same_compose(images):
    code = pipeline_to_python(EDITED)
    assert "# disabled: A.ToGray(method='average', p=0.3)," in code
    namespace: dict = {}
    exec(compile(code, "<pipeline>", "exec"), namespace)  # our own generated snippet
    compose = namespace["transform"]
    result = augment_grid(images, EDITED, rows=4, cols=4)
    outputs = [compose(image=images[i]) for i in result.indices]
    assert np.stack([o["image"] for o in outputs]).tobytes() == result.tiles.tobytes()
    assert compose.seed == 1234 and compose.strict


def test_export_refuses_an_invalid_pipeline():
    with pytest.raises(PipelineError, match="Sharpen.alpha"):
        pipeline_to_json(one_step("Sharpen", {"alpha": (0.9, 0.1)}))


def test_import_errors_are_typed():
    good = pipeline_to_dict(EDITED)
    bad_cases = {
        "{not json": "not valid JSON",
        "[1, 2]": "not an Augmentation Lab export",
        json.dumps({"transform": good["transform"]}): "the 'augmentation_lab' section is missing",
        json.dumps(good | {"augmentation_lab": good["augmentation_lab"] | {"format": 99}}): "unsupported export format",
        json.dumps(
            good | {"augmentation_lab": {"format": 1, "seed": 0, "steps": [{"transform": "Nope"}]}}
        ): "Nope (step 1): unknown transform",
        json.dumps(
            good
            | {"augmentation_lab": {"format": 1, "seed": 0, "steps": [{"transform": "Affine", "params": {"scale": 3}}]}}
        ): "Affine.scale (step 1): expected a pair",
        json.dumps(good | {"augmentation_lab": {"format": 1, "seed": 0, "steps": "Affine"}}): "must be a list",
        json.dumps(good | {"augmentation_lab": {"format": 1, "seed": -3, "steps": []}}): "seed must be",
        " " * (augment.MAX_IMPORT_CHARS + 1): "far smaller",
    }
    for text, message in bad_cases.items():
        with pytest.raises(PipelineError, match=re.escape(message)):
            pipeline_from_json(text)
    with pytest.raises(PipelineError, match="not valid YAML"):
        pipeline_from_yaml("a: [1, 2")
    with pytest.raises(PipelineError, match="not valid YAML"):
        pipeline_from_yaml("!!python/object/apply:os.system ['true']")  # safe_load only


def test_import_refuses_a_file_edited_in_one_place_only():
    document = pipeline_to_dict(EDITED)
    document["transform"]["transforms"][2]["p"] = 0.9  # HorizontalFlip's p, changed outside the editor state
    with pytest.raises(PipelineError, match="does not match"):
        pipeline_from_dict(document)


# ---------------------------------------------------------------------------------------------------- tile_grid


def test_tile_grid_is_exact():
    tiles = np.stack([np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30, 40)])
    tiles[0, 0, 0] = 99
    grid = tile_grid(tiles, 2, 2, scale=2, pad=1, fill=255)
    assert grid.shape == (2 * 4 + 3, 2 * 6 + 3, 3)
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all() and (grid[5] == 255).all()
    assert (grid[1:3, 1:3] == 99).all() and (grid[1:5, 3:7] == 10).all()  # nearest-neighbour 2x2 blocks
    assert (grid[1:5, 8:14] == 20).all() and (grid[6:10, 1:7] == 30).all() and (grid[6:10, 8:14] == 40).all()
    assert np.array_equal(tile_grid(tiles, 4, 1, scale=1, pad=0)[:, :, 0].reshape(4, 2, 3)[1:, 0, 0], [20, 30, 40])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.zeros((3, 4, 4, 3), np.uint8), 2, 2), {}, "needs 4 tiles"),
        ((np.zeros((4, 4, 4), np.uint8), 2, 2), {}, "must be uint8"),
        ((np.zeros((4, 4, 4, 3), np.uint8), 2, 2), {"scale": 0}, "scale must be"),
        ((np.zeros((4, 4, 4, 3), np.uint8), 2, 2), {"pad": -1}, "pad must be"),
        ((np.zeros((4, 4, 4, 3), np.uint8), 2, 2), {"fill": 256}, "fill must be"),
    ],
)
def test_tile_grid_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(GridError, match=message):
        tile_grid(*args, **kwargs)


def test_pick_images_is_seeded_without_replacement_and_leaves_global_rng_alone() -> None:
    from camlib.augment import pick_images

    state = np.random.get_state()
    pool = np.arange(100, 200)
    first = pick_images(pool, 64, seed=7)
    assert first == pick_images(pool, 64, seed=7)
    assert first != pick_images(pool, 64, seed=8)
    assert len(set(first)) == 64 and set(first) <= set(pool.tolist())
    assert first == np.random.default_rng(7).choice(pool, size=64, replace=False).tolist()
    assert pick_images([3, 5], 5, seed=0) == [3, 5, 3, 5, 3]  # too few: cycled in order
    with pytest.raises(GridError, match="no images"):
        pick_images([], 4, seed=0)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


# ---------------------------------------------------------------------------------------------------- whole catalogue


def test_every_albumentations_transform_is_catalogued_or_omitted_with_a_reason():
    from albumentations.core.transforms_interface import BasicTransform, DualTransform, ImageOnlyTransform

    concrete = {
        name
        for name in dir(A)
        if inspect.isclass(getattr(A, name))
        and issubclass(getattr(A, name), BasicTransform)
        and getattr(A, name) not in (BasicTransform, DualTransform, ImageOnlyTransform, A.Transform3D)
    }
    assert not catalogue.CATALOGUE.keys() & catalogue.OMITTED.keys()
    assert concrete == catalogue.CATALOGUE.keys() | catalogue.OMITTED.keys()
    assert all(reason for reason in catalogue.OMITTED.values())
    assert len(TRANSFORMS) >= 90


@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_transform_has_a_summary_and_applies_to_images(name):
    spec = TRANSFORMS[name]
    assert spec.summary and "\n" not in spec.summary
    assert "Image" in spec.targets
    assert (spec.reference_key is not None) == (spec.category == "second image")


@pytest.mark.parametrize("name", ["FDA", "HistogramMatching", "PixelDistributionAdaptation"])
def test_second_image_transforms_take_it_from_the_data(name, images):
    pipeline = one_step(name, {"blend_ratio": (1.0, 1.0)} if name != "FDA" else {"beta_limit": (0.2, 0.2)}, seed=2)
    grid = augment_grid(images, pipeline, rows=1, cols=4, indices=[0, 1, 2, 3])
    again = augment_grid(images, pipeline, rows=1, cols=4, indices=[0, 1, 2, 3])
    assert grid.tiles.tobytes() == again.tiles.tobytes()
    assert not np.array_equal(grid.tiles, images[:4])
    # the offered second images are the data's own, never the tile's image while there are others
    offered = augment.pick_references(images, 3, seed=2)
    assert 1 <= len(offered) <= augment.MAX_REFERENCES and not any(r is images[3] for r in offered)
    assert len(augment.pick_references(images[:1], 0, seed=2)) == 1  # a lone image is matched to itself
    # a given reference set is used instead: matching to a flat grey image changes the result
    grey = augment_grid(
        images, pipeline, rows=1, cols=4, indices=[0, 1, 2, 3], references=np.full((1, 8, 8, 3), 128, np.uint8)
    )
    assert grey.tiles.tobytes() != grid.tiles.tobytes()
    with pytest.raises(PipelineError, match=f"{name} needs a second image"):
        augment_image(build_pipeline(pipeline), images[0])


# ---------------------------------------------------------------------------------------------------- step by step


@pytest.mark.parametrize("mode", ["many", "one"])
def test_trace_tile_shows_each_step_with_the_grids_own_draws(images, mode):
    pipeline = Pipeline(EDITED.steps + (PipelineStep("HistogramMatching", p=0.5),), seed=7)
    grid = augment_grid(images, pipeline, mode=mode, rows=3, cols=3, indices=[4] if mode == "one" else None)
    before = rng_state()
    for tile in (0, 4, 8):
        trace = augment.trace_tile(images, pipeline, grid, tile)
        assert trace.index == grid.indices[tile] and np.array_equal(trace.original, images[trace.index])
        assert trace.transforms == tuple(s.transform for s in pipeline.steps if s.enabled)
        assert len(trace.images) == len(trace.applied) == len(trace.transforms)
        assert np.array_equal(trace.images[-1], grid.tiles[tile])  # the last step's output is the tile
        assert tuple(a for a in trace.applied if a is not None) == grid.applied[tile]
        assert trace.images[0].shape == (40, 40, 3)  # after PadIfNeeded(40, 40)
        for name, applied in zip(trace.transforms, trace.applied, strict=True):
            assert applied is None or applied["transform"] == name
    assert rng_state() == before
    with pytest.raises(GridError, match="tile must be"):
        augment.trace_tile(images, pipeline, grid, 9)
