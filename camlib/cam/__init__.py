"""Grad-CAM-family class activation maps for several layers from one pass.

``compute_cams(model, x, layers, method=..., targets=...)`` explains what each image's target scores (one callable
per image on its model output, ``camlib.targets``; ``class_idx=k`` for a class's logit) with one map per layer;
``compute_cam_grid`` computes several methods from shared passes. ``CamOptions`` is the set of options both take.

The package is laid out by concern:

- ``registry``: ``LayerEvidence`` (what a method gets), ``MethodSpec``, ``register_method`` and ``METHODS``;
- ``result``: ``CamResult`` and the finishing numerics (``finish_maps``, ``minmax_normalize``, ``working_dtype``);
- ``engine``: hooks, the forward and gradient passes, ``compute_cams``, ``compute_cam_grid``, ``CamOptions``;
- the methods, by family: ``gradient``, ``activation``, ``perturbation``, ``transformer``.

Adding a method is one function decorated with ``register_method`` in its family's module, plus its test; it is
listed after the methods of ``METHOD_ORDER``. Importing ``camlib.cam`` registers every method.
"""

from camlib.cam import activation, gradient, perturbation, transformer
from camlib.cam.activation import (
    FEM_K,
    KPCA_DENSE_MAX,
    KPCA_MAX_KERNEL_BYTES,
    _kernel_projection,
    eigen_projection,
)
from camlib.cam.engine import AUG_SMOOTH_VIEWS, CamOptions, compute_cam_grid, compute_cams
from camlib.cam.gradient import FINER_ALPHA, FINER_COMPARISONS
from camlib.cam.perturbation import (
    ISCAM_SAMPLES,
    SESS_BLUR_SIGMA,
    SESS_BLUR_SIZE,
    SESS_SCALE_STEP,
    SESS_SCALES,
    SMOOTH_GRADCAMPP_SAMPLES,
    SMOOTH_GRADCAMPP_STD,
    SSCAM_SAMPLES,
    SSCAM_STD,
)
from camlib.cam.registry import (
    FAMILIES,
    METHOD_ORDER,
    METHODS,
    RANDOM_CAM_SEED,
    LayerEvidence,
    MethodSpec,
    Progress,
    ProgressCallback,
    _order_methods,
    register_method,
)
from camlib.cam.result import (
    DEGENERATE_RATIO,
    NORM_EPS,
    CamResult,
    _upcast,
    finish_maps,
    layer_magnitudes,
    minmax_normalize,
    shared_scale_maps,
    upsample_maps,
    working_dtype,
)

_order_methods()

__all__ = [
    "AUG_SMOOTH_VIEWS",
    "DEGENERATE_RATIO",
    "FAMILIES",
    "FEM_K",
    "FINER_ALPHA",
    "FINER_COMPARISONS",
    "ISCAM_SAMPLES",
    "KPCA_DENSE_MAX",
    "KPCA_MAX_KERNEL_BYTES",
    "METHODS",
    "METHOD_ORDER",
    "NORM_EPS",
    "RANDOM_CAM_SEED",
    "SESS_BLUR_SIGMA",
    "SESS_BLUR_SIZE",
    "SESS_SCALES",
    "SESS_SCALE_STEP",
    "SMOOTH_GRADCAMPP_SAMPLES",
    "SMOOTH_GRADCAMPP_STD",
    "SSCAM_SAMPLES",
    "SSCAM_STD",
    "CamOptions",
    "CamResult",
    "LayerEvidence",
    "MethodSpec",
    "Progress",
    "ProgressCallback",
    "_kernel_projection",
    "_upcast",
    "activation",
    "compute_cam_grid",
    "compute_cams",
    "eigen_projection",
    "finish_maps",
    "gradient",
    "layer_magnitudes",
    "minmax_normalize",
    "perturbation",
    "register_method",
    "shared_scale_maps",
    "transformer",
    "upsample_maps",
    "working_dtype",
]
