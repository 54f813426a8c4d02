"""Limits of camlib.augment that an input's declarations decide, not its bytes (catalogue rows 71 and 73).

Row 71: every step's output size is bounded from its declared parameters before any pixel is made (checked here
against Albumentations' own outputs for every transform that can change the size, and every other one keeping it),
compounding steps of every growing kind are refused in milliseconds with flat memory (ru_maxrss in a subprocess), a
grid stops between tiles when its progress callback raises, and the time estimate follows the measured costs.
Row 73: every parser of untrusted text (link query, JSON, YAML) gives a valid pipeline or a ``CamlibError``, also for
random Unicode, huge numbers and deep nesting (hypothesis).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest
import yaml
from albumentations.augmentations.crops.transforms import CropSizeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camlib.augment import (
    CIFAR10_TRAIN_PIPELINE,
    KEEPS_SIZE,
    MAX_GRID_PIXELS,
    MAX_IMPORT_CHARS,
    MAX_STEP_PIXELS,
    SIZE_RULES,
    TRANSFORMS,
    GridError,
    Pipeline,
    PipelineError,
    PipelineStep,
    augment_grid,
    augment_image,
    build_pipeline,
    estimate_grid,
    output_bounds,
    pipeline_from_json,
    pipeline_from_query,
    pipeline_from_yaml,
    pipeline_to_json,
    pipeline_to_query,
    pipeline_to_yaml,
)
from camlib.errors import CamlibError

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.filterwarnings("ignore:.* is a specialized version of XYMasking:UserWarning"),
    pytest.mark.filterwarnings("ignore:ShiftScaleRotate is a special case of Affine:UserWarning"),
    pytest.mark.filterwarnings("ignore:TimeReverse is an alias for HorizontalFlip:UserWarning"),
    pytest.mark.filterwarnings("ignore:This augmenter is very slow:UserWarning"),
]


def random_params(name: str, rng: random.Random) -> dict:
    """A value for every catalogued parameter of ``name``, uniformly inside its catalogue bounds."""
    params = {}
    for p in TRANSFORMS[name].params:
        if p.kind == "float":
            params[p.name] = rng.uniform(p.low, p.high)
        elif p.kind == "int":
            params[p.name] = p.low + p.step * rng.randint(0, int((p.high - p.low) // p.step))
        elif p.kind == "range":
            params[p.name] = tuple(sorted(rng.uniform(p.low, p.high) for _ in range(2)))
        elif p.kind == "int_range":
            n = int((p.high - p.low) // p.step)
            params[p.name] = tuple(sorted(p.low + p.step * rng.randint(0, n) for _ in range(2)))
        elif p.kind == "int_pair":
            params[p.name] = (rng.randint(p.low, p.high), rng.randint(p.low, p.high))
        elif p.kind == "choice":
            params[p.name] = rng.choice(p.choices)
        elif p.kind == "bool":
            params[p.name] = rng.random() < 0.5
    return params


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- row 71: declared sizes


def test_every_transform_has_a_size_rule_or_keeps_its_size() -> None:
    assert SIZE_RULES.keys() <= TRANSFORMS.keys()
    assert TRANSFORMS.keys() - SIZE_RULES.keys() == KEEPS_SIZE
    # every kind that grows an image is among the rules
    growing = {"Pad", "PadIfNeeded", "CropAndPad", "RandomScale", "Resize", "SmallestMaxSize", "LongestMaxSize"}
    assert growing | {"Affine", "Perspective", "RandomResizedCrop", "RandomSizedCrop", "Crop", "CenterCrop"} <= set(
        SIZE_RULES
    )


@pytest.mark.bad_input(71)
@pytest.mark.parametrize("name", sorted(SIZE_RULES))
def test_declared_bounds_hold_for_every_size_changing_transform(name: str) -> None:
    """Random parameters inside the catalogue, odd and thin images, with p=1 and p=0.5: Albumentations' output always
    lies in the box ``output_bounds`` declares."""
    rng = random.Random(name)
    checked = 0
    for trial in range(6):
        params = random_params(name, rng)
        p = 1.0 if trial % 2 == 0 else 0.5
        try:
            compose = build_pipeline(Pipeline((PipelineStep(name, params, p=p),), trial))
        except PipelineError:
            continue  # a combination the schema refuses (e.g. an Affine with an invalid rotate_method)
        for height, width in ((32, 32), (17, 5), (48, 32), (2, 40)):
            image = noise(height, width, trial)
            box = output_bounds(compose, height, width)[-1]
            for _ in range(3):
                try:
                    out = augment_image(compose, image, references=[image])["image"].shape[:2]
                except (ValueError, CropSizeError):  # Albumentations': a crop larger than the image, no padding
                    break
                checked += 1
                assert box.h_lo <= out[0] <= box.h_hi and box.w_lo <= out[1] <= box.w_hi, (params, (height, width))
    assert checked >= 20


@pytest.mark.parametrize("name", sorted(KEEPS_SIZE))
def test_every_other_transform_keeps_the_size(name: str) -> None:
    rng = random.Random(name)
    image = noise(19, 27)
    for params in ({}, random_params(name, rng)):
        try:
            compose = build_pipeline(Pipeline((PipelineStep(name, params),), 0))
            out = augment_image(compose, image, references=[noise(23, 17, 1)])["image"]
        except ValueError:  # PipelineError, or Albumentations' own: e.g. a mask longer than this small image
            continue
        assert out.shape == image.shape, params


# one step of each kind that grows the image, repeated: each in bounds, their product not
GROWING = {
    "RandomScale": {"scale_limit": (1.0, 1.0)},
    "CropAndPad": {"percent": (0.5, 0.5), "keep_size": False},
    "Affine": {"scale": (2.0, 2.0), "fit_output": True},
    "Pad": {"padding": (32, 32)},
}


@pytest.mark.bad_input(71)
@pytest.mark.parametrize("name", sorted(GROWING))
def test_compounding_steps_are_refused_before_any_work(name: str) -> None:
    pipeline = Pipeline(tuple(PipelineStep(name, GROWING[name]) for _ in range(32)), 0)
    link = pipeline_to_query(pipeline)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    start = time.perf_counter()
    with pytest.raises((PipelineError, GridError), match=f"{name}|too large") as caught:
        augment_grid(images, pipeline_from_query(link, 0), rows=8, cols=8)
    assert time.perf_counter() - start < 2.0
    assert "pixels" in str(caught.value)


@pytest.mark.bad_input(71)
def test_a_strip_made_by_one_step_cannot_be_grown_by_the_next() -> None:
    """A crop may leave a 1-px strip, which SmallestMaxSize scales 128 times in length: the bounds take the crop's
    declared range into account (a conservative box: both sides at their largest)."""
    strip = Pipeline(
        (
            PipelineStep("RandomCropFromBorders", {"crop_left": 0.5, "crop_right": 0.5}),
            PipelineStep("SmallestMaxSize", {"max_size": 128}),
        ),
        0,
    )
    boxes = output_bounds(build_pipeline(strip), 64, 64)
    assert (boxes[0].w_lo, boxes[1].h_hi) == (1, 64 * 128)  # a 1x64 strip scaled to 128 wide: 8192 high
    tile = augment_grid(np.zeros((1, 64, 64, 3), np.uint8), strip, rows=1, cols=1).tiles[0]
    assert tile.shape[0] <= boxes[1].h_hi and tile.shape[1] <= boxes[1].w_hi
    with pytest.raises(PipelineError, match="SmallestMaxSize"):  # from 1024x1024: a 131072-px-high strip
        augment_grid(np.zeros((1, 1024, 1024, 3), np.uint8), strip, rows=1, cols=1)


def test_a_one_pixel_image_is_refused_before_perspective() -> None:
    """Albumentations 2.0.8's Perspective never returns on a 1-px-high image: refused before it runs."""
    compose = build_pipeline(Pipeline((PipelineStep("Perspective", {}),), 0))
    with pytest.raises(PipelineError, match="at least 2x2"):
        augment_image(compose, noise(1, 40))


def test_grids_within_the_caps_still_work() -> None:
    pipeline = Pipeline(tuple(PipelineStep("RandomScale", {"scale_limit": (1.0, 1.0)}) for _ in range(3)), 0)
    grid = augment_grid(np.zeros((2, 32, 32, 3), np.uint8), pipeline, rows=2, cols=2)
    assert grid.tiles.shape == (4, 256, 256, 3)
    assert MAX_GRID_PIXELS >= 4 * 256 * 256 and MAX_STEP_PIXELS >= 256 * 256


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from camlib.augment import augment_grid, pipeline_from_query
    from camlib.errors import CamlibError
    link, rows = sys.argv[1], int(sys.argv[2])
    images = np.zeros((64, 32, 32, 3), np.uint8)
    augment_grid(images[:1], pipeline_from_query('[["HorizontalFlip",{},1.0,true]]', 0), rows=1, cols=1)  # warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        augment_grid(images, pipeline_from_query(link, 0), rows=rows, cols=rows)
        outcome = "drawn"
    except CamlibError as error:
        outcome = type(error).__name__
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "grown_kib": peak - before, "seconds": time.perf_counter() - start}))
    """
)


def _peak(link: str, rows: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, link, str(rows)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.bad_input(71)
def test_a_doubling_link_is_refused_with_flat_memory() -> None:
    """The issue's link: in-bounds steps that each double the image (3.3 GB before). Refused from the declarations:
    the process grows by less than 20 MiB, in well under a second; the largest grid the caps allow stays bounded."""
    doubling = pipeline_to_query(
        Pipeline(tuple(PipelineStep("RandomScale", {"scale_limit": (1.0, 1.0)}) for _ in range(12)), 0)
    )
    refused = _peak(doubling, 8)
    assert refused["outcome"] == "PipelineError" and refused["grown_kib"] < 20 * 1024 and refused["seconds"] < 1.0
    # seven doublings on one tile: a 4096x4096 image, the most one step may make (48 MiB as uint8 RGB)
    largest = pipeline_to_query(
        Pipeline(tuple(PipelineStep("RandomScale", {"scale_limit": (1.0, 1.0)}) for _ in range(7)), 0)
    )
    drawn = _peak(largest, 1)
    assert drawn["outcome"] == "drawn" and drawn["grown_kib"] < 400 * 1024


# -------------------------------------------------------------------------------------- row 71: stopped between tiles


class _Stop(BaseException):
    """Like Streamlit's StopException / RerunException: not an Exception, so nothing on the way catches it."""


@pytest.mark.bad_input(71)
def test_a_raising_progress_callback_stops_the_grid_between_tiles() -> None:
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 3:
            raise _Stop

    images = noise(32, 32)[None].repeat(4, axis=0)
    with pytest.raises(_Stop):
        augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=4, cols=4, progress=progress)
    assert calls == [(1, 16), (2, 16), (3, 16)]
    seen = []
    augment_grid(images, CIFAR10_TRAIN_PIPELINE, rows=2, cols=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


# -------------------------------------------------------------------------------------------- row 71: the estimate


def test_the_estimate_scales_with_tiles_and_stops_at_the_budget() -> None:
    one = estimate_grid(CIFAR10_TRAIN_PIPELINE, 32, 32, 16)
    two = estimate_grid(CIFAR10_TRAIN_PIPELINE, 32, 32, 32)
    assert one.complete and len(one.step_seconds) == len(CIFAR10_TRAIN_PIPELINE.steps)
    assert two.seconds == pytest.approx(2 * one.seconds)  # the same cached per-step measurements
    assert sum(one.step_seconds) == pytest.approx(one.seconds)
    slow = Pipeline(
        tuple(PipelineStep("Superpixels", {"p_replace": (1.0, 1.0), "n_segments": (256, 256)}) for _ in range(32)), 0
    )
    stopped = estimate_grid(slow, 32, 32, 256, budget=3.0)
    assert not stopped.complete and stopped.seconds > 3.0 and len(stopped.step_seconds) < 32
    disabled = Pipeline(tuple(PipelineStep(s.transform, s.params, s.p, enabled=False) for s in slow.steps), 0)
    assert estimate_grid(disabled, 32, 32, 256).seconds == 0.0


@pytest.mark.bad_input(71)
def test_the_estimate_follows_the_measured_time_of_a_grid() -> None:
    """Within a factor of 4 either way of the time the grid takes, for a step whose cost its parameters decide
    (ZoomBlur blends one zoomed copy per step_factor between 1 and max_factor: 1,000 here)."""
    pipeline = Pipeline((PipelineStep("ZoomBlur", {"max_factor": (2.0, 2.0), "step_factor": (0.001, 0.001)}),), 0)
    images = noise(64, 64)[None].repeat(4, axis=0)
    estimate = estimate_grid(pipeline, 64, 64, 16).seconds
    start = time.perf_counter()
    augment_grid(images, pipeline, rows=4, cols=4)
    took = time.perf_counter() - start
    assert took / 4 < estimate < took * 4


# ----------------------------------------------------------------------------------- row 73: strict parsing of input


HUGE = int("9" * 400)


@pytest.mark.bad_input(73)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[["Sharpen",{"alpha":[' + "9" * 400 + ",0.5]},1.0,true]]", "about 400 digits"),
        ('[["Sharpen",{},' + "9" * 400 + ",true]]", "about 400 digits"),
        ('[["Pad",{"padding":[' + "4" * 400 + ",4]},1.0,true]]", "about 400 digits"),
        ('[["Pad",{"fill":[1,2,' + "3" * 400 + "]},1.0,true]]", "about 400 digits"),
        ('[["Sharpen",{"alpha":[' + "9" * 5000 + ",0.5]},1.0,true]]", "not valid JSON"),  # past int()'s limit
        ("[" * 3000 + "]" * 3000, "nests"),
        ('[["Sharpen",{"alpha":' + "[" * 100 + "]" * 100 + "},1.0,true]]", "nests"),
        ('[["Sharpen",{"alpha":"' + "x" * 100_000 + '"},1.0,true]]', "Sharpen.alpha"),
        ('[["Sharpen",{"' + "k" * 100_000 + '":1},1.0,true]]', "unknown parameter"),
    ],
)
def test_link_values_give_typed_errors(text: str, expected: str) -> None:
    with pytest.raises(PipelineError, match=expected) as caught:
        pipeline_from_query(text, 0)
    assert len(str(caught.value)) < 1000


@pytest.mark.bad_input(73)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: " + "[" * 3000 + "]" * 3000, "nests"),
        ("- " * 3000 + "x", "nests"),
        ("a: &x [1, 2]\nb: *x", "anchors or aliases"),
        ("a: 1" + ":0" * 5000, "characters long"),  # YAML 1.1 sexagesimal: an integer of quadratic cost
        ("a: 0x" + "f" * 100_000, "characters long"),
        ("augmentation_lab: {format: 1, seed: " + "9" * 400 + ", steps: []}", "characters long|seed"),
        ("augmentation_lab: {format: 1, seed: 0, steps: [{transform: Sharpen, p: 1e999}]}", "probability"),
        (" " * (MAX_IMPORT_CHARS + 1), "far smaller"),
    ],
)
def test_yaml_imports_give_typed_errors_fast(text: str, expected: str) -> None:
    start = time.perf_counter()
    with pytest.raises(PipelineError, match=expected):
        pipeline_from_yaml(text)
    assert time.perf_counter() - start < 1.0


def test_the_largest_real_export_imports_fast_in_both_formats() -> None:
    """32 Affine steps, the longest export there is: well inside the cap, and parsed by the C loader quickly."""
    pipeline = Pipeline(tuple(PipelineStep("Affine", {"rotate": (-10.0, float(k))}) for k in range(32)), 2**32 - 1)
    for dump, load in ((pipeline_to_json, pipeline_from_json), (pipeline_to_yaml, pipeline_from_yaml)):
        text = dump(pipeline)
        assert len(text) < MAX_IMPORT_CHARS / 4
        start = time.perf_counter()
        restored = load(text)
        assert time.perf_counter() - start < 2.0
        assert dump(restored) == text
    assert yaml.__with_libyaml__  # the C loader is what makes YAML imports fast


# values as JSON and YAML hold them: huge and odd numbers, Unicode, and nesting
_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**450), max_value=10**450),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["²", "٣", "1_000", " 7 ", "+7", "#ff00ff", "0x10", "1:2:3"]),
)
_values = st.recursive(
    _atoms,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _step_items() -> st.SearchStrategy:
    names = st.sampled_from(sorted(TRANSFORMS)) | st.text(max_size=12)
    params = st.dictionaries(
        st.sampled_from(["alpha", "p", "height", "scale_limit", "fill", "padding"]) | st.text(max_size=6),
        _values,
        max_size=3,
    )
    return st.lists(st.tuples(names, params, _values, _values).map(list), max_size=4)


def _outcome(parse, *args) -> None:
    try:
        result = parse(*args)
    except CamlibError:
        return
    assert isinstance(result, Pipeline)
    build_pipeline(result)  # a pipeline that comes out is a valid one


@pytest.mark.bad_input(73)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=200)
    | st.builds(lambda s, n: s * n, st.sampled_from(["[", "[{", '{"a":', "- ", "a: [", "9"]), st.integers(0, 5000))
)
def test_fuzz_link_and_import_text(text: str) -> None:
    """Random Unicode and deep nesting to every parser of text: a Pipeline or a CamlibError, nothing else."""
    _outcome(pipeline_from_query, text, 0)
    _outcome(pipeline_from_json, text)
    _outcome(pipeline_from_yaml, text)


@pytest.mark.bad_input(73)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=_step_items(), seed=st.integers(min_value=-(10**40), max_value=10**40))
def test_fuzz_link_and_import_values(items: list, seed: int) -> None:
    """Well-formed documents whose values are anything JSON or YAML can hold: huge integers, non-finite floats,
    strings that ``str.isdigit()`` accepts, nested lists."""
    text = json.dumps(items, allow_nan=True)
    _outcome(pipeline_from_query, text, seed)
    steps = [{"transform": t, "params": params, "p": p, "enabled": enabled} for t, params, p, enabled in items]
    document = {"augmentation_lab": {"format": 1, "seed": seed, "steps": steps}}
    _outcome(pipeline_from_json, json.dumps(document, allow_nan=True))
    try:
        text = yaml.safe_dump(document)
    except (yaml.YAMLError, ValueError):
        return
    _outcome(pipeline_from_yaml, text)


@pytest.mark.bad_input(71)
@pytest.mark.parametrize(
    "steps,side,rows",
    [
        ([PipelineStep("RandomScale", {"scale_limit": (0.9, 0.9)})] * 7, 32, 16),  # tiles up to 2,883 px a side
        ([PipelineStep("RandomScale", {"scale_limit": (0.9, 0.9)})] * 5, 32, 8),
        ([PipelineStep("HorizontalFlip")], 400, 16),  # the inputs alone: 256 tiles of 400x400
    ],
)
def test_a_grid_too_large_to_draw_is_refused_by_its_estimate_before_any_step_is_timed(monkeypatch, steps, side, rows):
    """A browser session was offered "Draw the grid (about 7 s)" for a 16x16 grid that augment_grid then refused
    after the click: the estimate and the grid share one size check, so the estimate refuses first, with the same
    reason."""
    import camlib.augment.cost

    def timed(*_args, **_kwargs):
        raise AssertionError("a step was timed for a grid that cannot be drawn")

    monkeypatch.setattr(camlib.augment.cost, "step_seconds", timed)
    pipeline = Pipeline(tuple(steps), seed=0)
    with pytest.raises(GridError, match="too large") as estimated:
        estimate_grid(pipeline, side, side, rows * rows, budget=3.0)
    with pytest.raises(GridError, match="too large") as drawn:
        augment_grid(np.zeros((2, side, side, 3), np.uint8), pipeline, rows=rows, cols=rows)
    assert str(estimated.value).replace(f"grid of {rows * rows} tiles", "grid") == str(drawn.value).replace(
        f"{rows}x{rows} grid", "grid"
    )
