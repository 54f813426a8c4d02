"""The "gradient" family: maps from a layer's activations and the gradients of the targets' scores (Grad-CAM and its
variants), one backward shared by all of them (``camlib.cam.engine``).

One registered function per method: A = activations, g = gradients, both (B, C, h, w); sums run over channels c and
positions (i, j). Constants follow pytorch-grad-cam 1.5.7 (shared docs: cam-reference.md) so the numbers match.
"""

from __future__ import annotations

import torch

from camlib.cam.activation import _channel_sum, _weighted_sum, eigen_projection
from camlib.cam.registry import LayerEvidence, _logit_classes, family_decorator
from camlib.targets import Target, class_targets, target_scores

gradient_method = family_decorator("gradient")
# The cost of most gradient methods: the forward pass and one torch.autograd.grad call for every layer.
ONE_BACKWARD = "1 forward + 1 backward"


@gradient_method("gradcam", label="Grad-CAM", paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391", cost=ONE_BACKWARD)
def _gradcam(e: LayerEvidence) -> torch.Tensor:
    """Grad-CAM: ``sum_c w_c A_c`` with ``w_c = mean_ij g_cij`` (Selvaraju et al. 2017, eq. 1-2, before the ReLU)."""
    return _weighted_sum(e.gradients.mean(dim=(2, 3)), e.activations, e)


@gradient_method(
    "gradcam++", label="Grad-CAM++", paper="Chattopadhyay et al., WACV 2018, arXiv:1710.11063", cost=ONE_BACKWARD
)
def _gradcam_plus_plus(e: LayerEvidence) -> torch.Tensor:
    """Grad-CAM++: ``w_c = sum_ij alpha_cij relu(g_cij)`` with ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)`` (eq. 19 of
    Chattopadhyay et al. 2018 with exp(S) replaced by its gradients, as pytorch-grad-cam does; 1e-6 in the
    denominator, alpha = 0 where g = 0)."""
    acts, grads = e.activations, e.gradients
    grads_2 = grads**2
    grads_3 = grads_2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    alpha = grads_2 / (2 * grads_2 + sum_acts * grads_3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return _weighted_sum((torch.relu(grads) * alpha).sum(dim=(2, 3)), acts, e)


@gradient_method(
    "refinecam",
    label="RefineCAM (Grad-CAM++ over the layers)",
    paper="How to Evaluate and Refine your CAM, arXiv:2605.14641",
    cost="1 forward + 1 backward (as Grad-CAM++); pick 2+ layers",
    fuses_layers=True,
)
def _refinecam(e: LayerEvidence) -> torch.Tensor:
    """RefineCAM: the element-wise product of the normalised Grad-CAM++ maps of every requested layer, normalised
    (``CamResult.refined``), as pytorch-grad-cam's ``RefineCAM`` with its default base method: deep layers' coarse
    maps denoise early layers' detailed ones. Each layer's own map and raw map are Grad-CAM++'s
    (``_gradcam_plus_plus``); the fusion needs the layers of one call, so it is ``CamResult.refined``. (torch-cam
    0.5.0's ``RefineCAM`` fuses at the largest feature resolution instead of the input size.)"""
    return _gradcam_plus_plus(e)


@gradient_method("xgradcam", label="XGrad-CAM", paper="Fu et al., BMVC 2020, arXiv:2008.02312", cost=ONE_BACKWARD)
def _xgradcam(e: LayerEvidence) -> torch.Tensor:
    """XGrad-CAM: ``w_c = sum_ij (A_cij / (sum_ij A_cij + 1e-7)) g_cij`` (Fu et al. 2020, eq. 12)."""
    acts = e.activations
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    return _weighted_sum((e.gradients * acts / (sum_acts + 1e-7)).sum(dim=(2, 3)), acts, e)


@gradient_method("hirescam", label="HiResCAM", paper="Draelos & Carin, 2020, arXiv:2011.08891", cost=ONE_BACKWARD)
def _hirescam(e: LayerEvidence) -> torch.Tensor:
    """HiResCAM: ``sum_c g_c * A_c`` element-wise, no spatial averaging of the gradients (Draelos & Carin 2020)."""
    return _channel_sum(e.gradients * e.activations, e)


@gradient_method(
    "shapleycam",
    label="ShapleyCAM",
    paper="Cai, 2025, arXiv:2501.06261",
    cost="1 forward + 1 backward + 1 Hessian-vector product per layer",
    second_order=True,
)
def _shapleycam(e: LayerEvidence) -> torch.Tensor:
    """ShapleyCAM: ``sum_c w_c A_c`` with ``w_c = mean_ij (g - H A / 2)_cij``, ``H`` the Hessian of the score with
    respect to the activations: a second-order estimate of each channel's Shapley value (Cai 2025), as
    pytorch-grad-cam's ShapleyCAM. Where the network above the layer is piecewise linear (ReLU, max pooling, eval-mode
    batch norm) ``H A = 0`` and it equals Grad-CAM."""
    return _weighted_sum((e.gradients - 0.5 * e.hessian_products).mean(dim=(2, 3)), e.activations, e)


@gradient_method("layercam", label="LayerCAM", paper="Jiang et al., IEEE TIP 2021", cost=ONE_BACKWARD)
def _layercam(e: LayerEvidence) -> torch.Tensor:
    """LayerCAM: ``sum_c relu(g_c) * A_c`` element-wise (Jiang et al. 2021, eq. 5)."""
    return _channel_sum(torch.relu(e.gradients) * e.activations, e)


FINER_COMPARISONS = 3  # pytorch-grad-cam's default comparison_categories (1, 2, 3): the three most similar classes


FINER_ALPHA = 1.0  # pytorch-grad-cam's default comparison strength


def _finer_scores(logits: torch.Tensor, targets: list[Target]) -> torch.Tensor:
    """Finer-CAM's score: ``sum_j p_j (y_k - alpha y_j) / (sum_j p_j + 1e-9)`` over the ``FINER_COMPARISONS`` classes
    ``j`` whose logits are closest to the explained class ``k``'s, ``p = softmax(logits)`` (pytorch-grad-cam's
    ``FinerWeightedTarget``; gradients flow through ``p`` too), ``alpha = FINER_ALPHA``.

    Raises ``MethodError`` unless ``logits`` is ``(B, num_classes)`` and every target a class's raw logit (Finer-CAM
    builds its own contrast from the class; any other target has no class to contrast)."""
    targets = _logit_classes("Finer-CAM", logits, targets)
    main = target_scores(class_targets(targets), logits)
    rows, comparisons = torch.arange(len(targets)), min(FINER_COMPARISONS, logits.shape[1] - 1)
    distance = (logits - main[:, None]).detach().abs()
    distance[rows, torch.tensor(targets)] = -1.0  # the explained class comes first, then the most similar ones
    similar = distance.argsort(dim=1, stable=True)[:, 1 : 1 + comparisons]
    weights = torch.softmax(logits, dim=1).gather(1, similar)
    contrast = main[:, None] - FINER_ALPHA * logits.gather(1, similar)
    return (weights * contrast).sum(dim=1) / (weights.sum(dim=1) + 1e-9)


@gradient_method(
    "finercam",
    label="Finer-CAM",
    paper="Zhang et al., CVPR 2025, arXiv:2501.11309",
    cost=ONE_BACKWARD,
    score=_finer_scores,
)
def _finercam(e: LayerEvidence) -> torch.Tensor:
    """Finer-CAM: Grad-CAM of the explained class's logit against its most similar classes (``_finer_scores``), so
    the map shows what tells class k apart from the classes it is most easily confused with (Zhang et al. 2025), as
    pytorch-grad-cam's ``FinerCAM`` with its defaults (base method Grad-CAM, three comparisons, alpha 1)."""
    return _gradcam(e)


@gradient_method(
    "gradcam_elementwise",
    label="Grad-CAM element-wise",
    paper="Gildenblat et al., pytorch-grad-cam (2021), after Draelos & Carin, arXiv:2011.08891",
    cost=ONE_BACKWARD,
)
def _gradcam_elementwise(e: LayerEvidence) -> torch.Tensor:
    """Grad-CAM element-wise: ``sum_c relu(g_c * A_c)``, HiResCAM with the ReLU on each channel's product before the
    channel sum (pytorch-grad-cam's GradCAMElementWise), so negative products never cancel positive ones."""
    return _channel_sum(torch.relu(e.gradients * e.activations), e)


@gradient_method(
    "eigengradcam",
    label="Eigen-Grad-CAM",
    paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299 (on gradients x activations)",
    cost="1 forward + 1 backward + an SVD per image",
)
def _eigengradcam(e: LayerEvidence) -> torch.Tensor:
    """Eigen-Grad-CAM: the first principal component of ``g * A`` (``eigen_projection``), i.e. Eigen-CAM (Muhammad &
    Yeasin 2020) on the gradient-weighted activations, as pytorch-grad-cam's EigenGradCAM. The sign is fixed as for
    Eigen-CAM: the map correlates positively with ``mean_c g_c * A_c`` (HiResCAM's map up to scale)."""
    return eigen_projection(e.gradients * e.activations)
