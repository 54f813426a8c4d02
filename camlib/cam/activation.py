"""The "activation" family: maps from a layer's activations alone (Eigen-CAM, KPCA-CAM, FEM, Random-CAM) or with the
classifier's weights (CAM), and the channel sums every family shares (``_weighted_sum``, ``_channel_sum``,
``eigen_projection``).

One registered function per method: A = activations, g = gradients, both (B, C, h, w); sums run over channels c and
positions (i, j). Constants follow pytorch-grad-cam 1.5.7 (shared docs: cam-reference.md) so the numbers match.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from camlib.cam.registry import LayerEvidence, _logit_classes, family_decorator
from camlib.cam.result import working_dtype
from camlib.contracts import require_tensor
from camlib.errors import MethodError
from camlib.layouts import Layout

activation_method = family_decorator("activation")
# The cost of the activation methods that need nothing but the forward pass.
ONE_FORWARD = "1 forward"


def _weighted_sum(weights: torch.Tensor, acts: torch.Tensor, e: LayerEvidence | None = None) -> torch.Tensor:
    """``sum_c w_c A_c`` for ``(B, C)`` weights; with ``e.eigen_smooth`` the first principal component instead."""
    return _channel_sum(weights[:, :, None, None] * acts, e)


def _channel_sum(terms: torch.Tensor, e: LayerEvidence | None = None) -> torch.Tensor:
    """A method's per-channel terms ``(B, C, h, w)`` summed over channels, or, with ``e.eigen_smooth``, projected on
    their first principal component (pytorch-grad-cam's ``eigen_smooth``: ``get_2d_projection`` of the terms; camlib
    fixes the component's sign so it correlates positively with the channel sum, as ``eigen_projection``)."""
    if e is not None and e.eigen_smooth:
        return eigen_projection(terms).to(terms.dtype)
    return terms.sum(dim=1)


@activation_method(
    "eigencam",
    label="Eigen-CAM",
    paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
    cost="1 forward + an SVD per image",
)
def _eigencam(e: LayerEvidence) -> torch.Tensor:
    """Eigen-CAM: the activations projected on their first principal component (``eigen_projection``)."""
    return eigen_projection(e.activations)


def eigen_projection(acts: torch.Tensor) -> torch.Tensor:
    """First principal component of each image's activations, ``(B, C, h, w) -> (B, h, w)``.

    The activations are centred per channel (as pytorch-grad-cam does) and projected on the first right singular
    vector. An SVD's sign is arbitrary; we fix it so the projection correlates positively with the channel-mean
    activation, so strongly activated regions come out positive. pytorch-grad-cam leaves the sign as LAPACK returns it.

    Raises ``InputError`` unless ``acts`` is a non-empty float ``(B, C, h, w)`` tensor with data (not ``meta``).
    """
    require_tensor(acts, "acts", ndim=4, floating=True)

    def first_component(centred: torch.Tensor) -> torch.Tensor:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        return centred @ vh[0]

    return _per_image_projection(acts, first_component)


def _per_image_projection(acts: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``project`` applied to each image's channel-centred positions ``(h*w, C)`` float64 (NaN read as 0), its
    ``(h*w,)`` projection oriented (``_oriented``) and reshaped: ``(B, C, h, w) -> (B, h, w)`` in ``acts``'
    working dtype."""
    dtype = working_dtype(acts.dtype)
    out = []
    for image_acts in torch.nan_to_num(acts.double(), nan=0.0):
        flat = image_acts.flatten(1).T  # (h*w, C)
        out.append(_oriented(project(flat - flat.mean(dim=0)), flat).reshape(image_acts.shape[1:]))
    return torch.stack(out).to(dtype)


def _oriented(projection: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``projection`` (h*w,) or its negative, whichever correlates non-negatively with the channel-mean activation of
    ``flat`` (h*w, C): a principal component's sign is arbitrary; strongly activated regions should be positive."""
    mean_act = flat.mean(dim=1)
    return -projection if torch.dot(projection - projection.mean(), mean_act - mean_act.mean()) < 0 else projection


KPCA_DENSE_MAX = 200  # positions; above this, one eigenpair by ARPACK instead of a full eigh (as sklearn's KernelPCA)


# KPCA-CAM's (h w) x (h w) float64 kernel may take at most this many bytes (the computation holds about three such
# matrices at once): 512 MiB allows 8,192 positions (e.g. 90 x 90); a 112 x 112 layer (12,544 positions, 1.26 GB per
# matrix) is refused before any kernel is built.
KPCA_MAX_KERNEL_BYTES = 512 * 2**20


def _kpca_refusal(positions: int) -> str | None:
    """Why KPCA-CAM refuses a layer of ``positions = h * w`` positions (its kernel over the memory cap), or None."""
    size = 8 * positions**2
    if size <= KPCA_MAX_KERNEL_BYTES:
        return None
    cap = int((KPCA_MAX_KERNEL_BYTES / 8) ** 0.5)
    return (
        f"KPCA-CAM builds a {positions:,} x {positions:,} kernel matrix for this layer ({size / 2**30:.1f} GiB in "
        f"float64, about three times that while it works), over its {KPCA_MAX_KERNEL_BYTES // 2**20} MiB cap "
        f"(camlib.cam.KPCA_MAX_KERNEL_BYTES): pick a deeper layer with at most {cap:,} positions, or use Eigen-CAM"
    )


@activation_method(
    "kpcacam",
    label="KPCA-CAM",
    paper="Karmani et al., 2024, arXiv:2410.00267",
    cost="1 forward + a kernel eigenproblem per image, (h w) x (h w)",
    refuse=lambda _model, _module, layout: (
        None if layout is None or not layout.height else _kpca_refusal(layout.height * layout.width)
    ),
)
def _kpcacam(e: LayerEvidence) -> torch.Tensor:
    """KPCA-CAM: the activations projected on their first kernel principal component (Karmani et al. 2024), with
    pytorch-grad-cam's default sigmoid kernel ``k(a, b) = tanh(a . b / C + 1)`` on the channel-centred activations
    of each position (``_kernel_projection``).

    Raises ``MethodError`` before building the kernel when its ``(h w)^2`` float64 entries exceed
    ``KPCA_MAX_KERNEL_BYTES`` (``MethodSpec.refusal`` says so from the layer's layout, before any forward)."""
    reason = _kpca_refusal(e.activations.shape[2] * e.activations.shape[3])
    if reason is not None:
        raise MethodError(reason)
    return _kernel_projection(e.activations)


def _kernel_projection(acts: torch.Tensor) -> torch.Tensor:
    """First kernel principal component of each image's activations, ``(B, C, h, w) -> (B, h, w)``, in float64.

    As sklearn's ``KernelPCA(n_components=1, kernel="sigmoid")`` that pytorch-grad-cam calls: the ``(hw, hw)`` kernel
    of the channel-centred positions, centred in feature space, its top eigenpair ``(lambda, v)`` (largest algebraic
    eigenvalue), the projection ``v * sqrt(lambda)``. Eigenvalues at rounding level (no variation) give zeros. The
    sign is fixed as Eigen-CAM's (``_oriented``); sklearn makes the eigenvector's largest entry positive instead.
    """

    def first_kernel_component(centred: torch.Tensor) -> torch.Tensor:
        kernel = torch.tanh(centred @ centred.T / centred.shape[1] + 1.0)
        noise = 100 * len(kernel) * torch.finfo(kernel.dtype).eps * float(kernel.abs().max())
        kernel = kernel - kernel.mean(dim=0, keepdim=True) - kernel.mean(dim=1, keepdim=True) + kernel.mean()
        value, vector = _top_eigenpair(kernel)
        return vector * value.sqrt() if float(value) > noise else torch.zeros_like(vector)

    return _per_image_projection(acts, first_kernel_component)


def _top_eigenpair(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest eigenvalue of a symmetric float64 matrix and a unit eigenvector: a full ``eigh`` up to
    ``KPCA_DENSE_MAX`` rows, else ARPACK (Lanczos, ``tol=0``: to machine precision) from a fixed start vector."""
    if len(matrix) <= KPCA_DENSE_MAX:
        values, vectors = torch.linalg.eigh(matrix)
        return values[-1], vectors[:, -1]
    start = 2 * torch.rand(len(matrix), generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
    from scipy.sparse.linalg import eigsh  # imported here: 0.25 s, and only KPCA-CAM's large kernels need it

    values, vectors = eigsh(matrix.cpu().numpy(), k=1, which="LA", tol=0, v0=start.numpy())
    return torch.from_numpy(values)[0].to(matrix.device), torch.from_numpy(vectors[:, 0]).to(matrix.device)


FEM_K = 2.0  # pytorch-grad-cam 1.5.7's FEM default: a position is salient above mean + k std of its channel


@activation_method(
    "fem", label="FEM", paper="Fuad et al., IPTA 2020, doi:10.1109/IPTA50016.2020.9286629", cost=ONE_FORWARD
)
def _fem(e: LayerEvidence) -> torch.Tensor:
    """FEM (Feature Explanation Method): ``sum_c w_c A_c`` with ``w_c`` the share of channel ``c``'s positions whose
    activation exceeds ``mean_ij(A_c) + k std_ij(A_c)`` (population std, ``k = FEM_K``): channels with a few strongly
    activated positions weigh most (Fuad et al. 2020's k-sigma rule), as pytorch-grad-cam's ``FEM``. No gradients, no
    class: the map is the same for every class. Like pytorch-grad-cam's, it ignores ``eigen_smooth``."""
    acts = e.activations
    threshold = acts.mean(dim=(2, 3), keepdim=True) + FEM_K * acts.std(dim=(2, 3), correction=0, keepdim=True)
    return _weighted_sum((acts > threshold).to(acts.dtype).mean(dim=(2, 3)), acts)


@activation_method(
    "randomcam",
    label="Random-CAM (baseline)",
    paper="a sanity-check baseline (pytorch-grad-cam's RandomCAM); cf. Adebayo et al., NeurIPS 2018, arXiv:1810.03292",
    cost=ONE_FORWARD,
    stochastic=True,
)
def _randomcam(e: LayerEvidence) -> torch.Tensor:
    """Random-CAM: ``sum_c w_c A_c`` with ``w_c ~ U(-1, 1)``, weights that know nothing of the class or the model: a
    map that looks as convincing as a method's says little about that method (Adebayo et al. 2018's sanity checks).

    pytorch-grad-cam draws fresh weights per image from numpy's global generator; camlib draws them from a
    ``torch.Generator`` seeded with ``compute_cams(seed=...)`` (default ``RANDOM_CAM_SEED``; library code never seeds or
    reads global generators), the same ``C`` draws for every image, so a map depends only on its own image, layer and
    seed."""
    generator = torch.Generator().manual_seed(e.seed)
    acts = e.activations
    weights = 2 * torch.rand(acts.shape[1], generator=generator, dtype=torch.float64) - 1
    return _weighted_sum(weights.to(device=acts.device, dtype=acts.dtype).expand(len(acts), -1), acts, e)


def _cam_refusal(model: nn.Module, _module: nn.Module, layout: Layout | None) -> str | None:
    """Why CAM cannot explain a layer, from the structure: no ``nn.Linear`` taking the layer's channels, or tokens
    with a class token (such models classify from that token, not from the average of the patches)."""
    use = "use Grad-CAM, which equals CAM where CAM is defined"
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return f"CAM needs a classifier that is one Linear layer on the global average of a feature map; {use}"
    if layout is not None and layout.kind == "tokens" and layout.prefix_tokens > 0:
        return f"CAM needs the global average of the layer; this model classifies from its class token: {use}"
    if layout is not None and layout.channels and all(m.in_features != layout.channels for m in linears):
        return (
            f"CAM needs the layer whose global average feeds the classifier; this layer has {layout.channels} "
            "channels and no Linear layer of the model takes that many: pick the last feature layer before the "
            f"global pooling, or {use}"
        )
    return None


@activation_method(
    "cam", label="CAM", paper="Zhou et al., CVPR 2016, arXiv:1512.04150", cost=ONE_FORWARD, refuse=_cam_refusal
)
def _cam(e: LayerEvidence) -> torch.Tensor:
    """CAM: ``sum_c W_kc A_c`` with ``W_k`` the explained class's row of the classifier (Zhou et al. 2016, eq. 1-2).

    Defined only where the logits are one ``nn.Linear`` applied to the global average of this layer's output
    (ResNet's ``layer4``, EfficientNet's last conv, Swin's final norm). That is checked on the numbers: the Linear
    layer used is the one that maps this layer's channel means to the model's logits (torch-cam instead takes the
    first ``nn.Linear`` in ``named_modules()`` without a check). On such models Grad-CAM's weights are ``W_k / (h w)``
    and the two maps are equal.

    Raises ``MethodError`` when no Linear layer of the model does that (another layer, or a model that ends with an
    MLP, a norm after the pooling, or a class token)."""
    classes = _logit_classes("CAM", e.logits, e.targets)
    return _weighted_sum(_gap_classifier(e)[classes], e.activations, e)


def _gap_classifier(e: LayerEvidence) -> torch.Tensor:
    """The ``(num_classes, C)`` weight of the ``nn.Linear`` whose output on this layer's channel means is the logits."""
    pooled = e.activations.mean(dim=(2, 3))
    logits = e.logits.detach()
    # The model's own rounding (its dtype's, not the upcast logits') bounds how far its logits may be from ours.
    precision = e.output.dtype if e.output is not None else logits.dtype
    tolerance = torch.finfo(precision).eps ** 0.5 * max(float(logits.abs().max()), 1.0)
    for module in e.model.modules():
        if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != (logits.shape[1], pooled.shape[1]):
            continue
        bias = None if module.bias is None else module.bias.to(pooled.dtype)
        predicted = F.linear(pooled, module.weight.to(pooled.dtype), bias)
        if float((predicted - logits).abs().max()) <= tolerance:
            return module.weight.detach().to(e.activations.dtype)
    raise MethodError(
        f"CAM needs a model whose logits are a Linear layer applied to the global average of the chosen layer "
        f"({pooled.shape[1]} channels), and this model has none: pick the last feature layer before the global "
        "pooling (e.g. ResNet's layer4), or use Grad-CAM, which equals CAM where CAM is defined"
    )
