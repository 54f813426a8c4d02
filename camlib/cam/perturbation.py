"""The "perturbation" family: maps weighted by the model's scores of perturbed inputs (masked, ablated, noisy or
rescaled copies), each scored with the image's target as pytorch-grad-cam's ScoreCAM and AblationCAM do.

Methods that pytorch-grad-cam lacks follow torch-cam 0.5.0 (SS-CAM, IS-CAM; Smooth Grad-CAM++ follows the paper where
torch-cam departs from it, see its docstring). Sampling methods draw from a ``torch.Generator`` seeded with
``compute_cams(seed=...)``, never from a global generator.
"""

from __future__ import annotations

import cv2
import torch
import torch.nn.functional as F

from camlib.cam.activation import _weighted_sum
from camlib.cam.registry import LayerEvidence, family_decorator
from camlib.cam.result import _finish, _upcast
from camlib.errors import MethodError
from camlib.targets import target_scores

perturbation_method = family_decorator("perturbation")
# The cost of the per-channel perturbation methods: one extra forward per channel (in batches).
PER_CHANNEL = "1 forward + one forward per channel (slow)"


@perturbation_method(
    "scorecam", label="Score-CAM", paper="Wang et al., CVPR-W 2020, arXiv:1910.01279", cost=PER_CHANNEL
)
def _scorecam(e: LayerEvidence) -> torch.Tensor:
    """Score-CAM: ``sum_c w_c A_c`` with ``w = softmax_c(score(x * norm(up(A_c))))`` (Wang et al. 2020, eq. 4-6),
    numerically as pytorch-grad-cam: masks upsampled with ``align_corners=True``, min-max normalised with 1e-8."""
    acts, x = e.activations, e.x
    size = x.shape[-2:]
    raws = []
    for b, target in enumerate(e.targets):
        scores = []
        for start in range(0, acts.shape[1], e.batch_size):
            chunk = acts[b : b + 1, start : start + e.batch_size]
            up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=True)[0]  # (c, H, W)
            flat = up.flatten(1)
            mins = flat.min(dim=1).values[:, None, None]
            maxs = flat.max(dim=1).values[:, None, None]
            masks = (up - mins) / (maxs - mins + 1e-8)
            scores.append(target_scores([target] * len(masks), e.model((x[b][None] * masks[:, None]).to(x.dtype))))
            e.progress.step()
        raws.append(torch.softmax(torch.cat(scores).to(acts.dtype), dim=-1))
    return _weighted_sum(torch.stack(raws), acts, e)


@perturbation_method(
    "ablationcam",
    label="Ablation-CAM",
    paper="Desai & Ramaswamy, WACV 2020, doi:10.1109/WACV45572.2020.9093360",
    cost=PER_CHANNEL,
)
def _ablationcam(e: LayerEvidence) -> torch.Tensor:
    """Ablation-CAM: ``sum_c w_c A_c`` with ``w_c = (y - y_c) / y``, ``y`` the explained score and ``y_c`` the score
    with channel ``c`` of the layer's output set to zero (Desai & Ramaswamy 2020, eq. 3-4). ``batch_size`` ablated
    copies of an image per forward, as pytorch-grad-cam (its default batch is 32, like ``compute_cams``).

    pytorch-grad-cam 1.5.7 zeroes a channel only when the layer's minimum is exactly 0 (after a ReLU); otherwise it
    sets it to ``min - 1e7``, and since it re-reads the minimum after each ablation in a batch, the k-th channel of a
    batch to ``min - k * 1e7`` (a value that depends on the batch). camlib zeroes, as the paper; the two agree
    wherever the layer's minimum is 0. A score of exactly 0 leaves the ratio undefined: then ``w_c = y - y_c``."""
    out, dim = e.output, e.channel_dim
    channels = out.shape[dim]
    repeat = [1] * (out.dim() - 1)
    weights = []
    for b, target in enumerate(e.targets):
        ablated = []
        for start in range(0, channels, e.batch_size):
            index = torch.arange(start, min(start + e.batch_size, channels), device=out.device)
            batch = out[b : b + 1].repeat(len(index), *repeat)
            batch.movedim(dim, 1)[torch.arange(len(index), device=out.device), index] = 0  # copy k drops channel k
            inputs = e.x[b : b + 1].repeat(len(index), 1, 1, 1)
            outputs = e.forward_with_output(inputs, batch)
            ablated.append(target_scores([target] * len(index), outputs).to(e.activations.dtype))
            e.progress.step()
        score = e.scores[b]
        drop = score - torch.cat(ablated)
        weights.append(drop / score if bool(score != 0) else drop)
    return _weighted_sum(torch.stack(weights), e.activations, e)


SSCAM_SAMPLES = 35  # torch-cam 0.5.0's SSCAM defaults: noisy copies of each mask


SSCAM_STD = 2.0  # and the standard deviation of the Gaussian noise added to masks in [0, 1]


ISCAM_SAMPLES = 10  # torch-cam 0.5.0's ISCAM default: integration steps


def _score_masks(acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch-cam's Score-CAM masks of one image: each channel of ``acts`` ``(C, h, w)`` min-max normalised at feature
    resolution, ``(a - min) / (max(a - min) + 1e-8)``, then bilinearly upsampled to ``size`` (``align_corners=False``):
    ``(C, H, W)``. (pytorch-grad-cam's Score-CAM upsamples first, with ``align_corners=True``.)"""
    shifted = acts - acts.flatten(1).min(dim=1).values[:, None, None]
    masks = shifted / (shifted.flatten(1).max(dim=1).values[:, None, None] + 1e-8)
    return F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]


def _masked_score_gains(e: LayerEvidence, b: int, masks: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``score(scale * (x_b * mask_c)) - score(x_b)`` for every mask ``c`` of ``masks`` ``(C, H, W)``, ``batch_size``
    masked copies per forward, ``progress.step()`` after each (it may raise to cancel)."""
    target, x = e.targets[b], e.x[b]
    gains = []
    for start in range(0, len(masks), e.batch_size):
        inputs = x[None] * masks[start : start + e.batch_size, None]
        inputs = (inputs if scale == 1.0 else scale * inputs).to(x.dtype)  # the model's dtype; masks are upcast
        gains.append(target_scores([target] * len(inputs), e.model(inputs)).to(masks.dtype) - e.scores[b])
        e.progress.step()
    return torch.cat(gains)


@perturbation_method(
    "sscam",
    label="SS-CAM",
    paper="Wang et al., 2020, arXiv:2006.14255",
    cost=f"1 forward + {SSCAM_SAMPLES} forwards per channel (very slow)",
    samples=SSCAM_SAMPLES,
    stochastic=True,
)
def _sscam(e: LayerEvidence) -> torch.Tensor:
    """SS-CAM (Smoothed Score-CAM): ``sum_c w_c A_c`` with ``w = softmax_c(mean_i score(x * (M_c + d_i)) - score(x))``,
    ``M_c`` channel ``c``'s Score-CAM mask (``_score_masks``) and ``d_i ~ N(0, SSCAM_STD^2)`` per pixel, ``n_samples``
    noisy copies (Wang et al. 2020, smoothing the masks; torch-cam 0.5.0's ``SSCAM`` with its defaults, 35 samples,
    std 2). The score is the explained class's logit; subtracting ``score(x)`` leaves the softmax unchanged.

    Noise: for each image (and layer) a ``torch.Generator`` seeded with ``seed``; sample ``i`` is
    ``SSCAM_STD * randn(C, H, W)`` from it, drawn in float32, so every image of a batch gets the same draws and the
    batch size does not change them. Equal to torch-cam's ``SSCAM`` given those draws (tests/test_cam_methods.py).
    Cost: ``n_samples * C`` extra forwards per image, in batches of ``batch_size``."""
    acts, size = e.activations, (int(e.x.shape[-2]), int(e.x.shape[-1]))
    raws = []
    for b in range(len(e.targets)):
        masks = _score_masks(acts[b], size)
        generator = torch.Generator().manual_seed(e.seed)
        total = torch.zeros(len(masks), dtype=e.scores.dtype, device=masks.device)
        for _ in range(e.n_samples):
            noise = SSCAM_STD * torch.randn(masks.shape, generator=generator, dtype=torch.float32)
            total += _masked_score_gains(e, b, masks + noise.to(masks))
        raws.append(torch.softmax(total / e.n_samples, dim=0).to(acts.dtype))
    return _weighted_sum(torch.stack(raws), acts, e)


@perturbation_method(
    "iscam",
    label="IS-CAM",
    paper="Naidu et al., 2020, arXiv:2010.03023",
    cost=f"1 forward + {ISCAM_SAMPLES} forwards per channel (very slow)",
    samples=ISCAM_SAMPLES,
)
def _iscam(e: LayerEvidence) -> torch.Tensor:
    """IS-CAM (Integrated Score-CAM): ``sum_c w_c A_c`` with
    ``w = softmax_c(mean_i score(s_i * (x * M_c)) - score(x))``, ``s_i = sum_{j<=i} j / N`` for ``i = 1..N``
    (``N = n_samples``) and ``M_c`` channel ``c``'s Score-CAM mask (``_score_masks``): Score-CAM's scores integrated
    along a path of scaled masks (Naidu et al. 2020), as torch-cam 0.5.0's ``ISCAM`` (10 steps by default), whose
    scale accumulates ``j / N`` and so exceeds 1 after the first steps. Deterministic: no random draws, ``seed`` is
    not used. Cost: ``n_samples * C`` extra forwards per image, in batches of ``batch_size``."""
    acts, size = e.activations, (int(e.x.shape[-2]), int(e.x.shape[-1]))
    raws = []
    for b in range(len(e.targets)):
        masks = _score_masks(acts[b], size)
        total = torch.zeros(len(masks), dtype=e.scores.dtype, device=masks.device)
        scale = 0.0
        for step in range(e.n_samples):
            scale += (step + 1) / e.n_samples
            total += _masked_score_gains(e, b, masks, scale)
        raws.append(torch.softmax(total / e.n_samples, dim=0).to(acts.dtype))
    return _weighted_sum(torch.stack(raws), acts, e)


SMOOTH_GRADCAMPP_SAMPLES = 4  # torch-cam 0.5.0's SmoothGradCAMpp defaults: noisy copies of the input


SMOOTH_GRADCAMPP_STD = 0.3  # and the standard deviation of the Gaussian noise added to the (preprocessed) input


@perturbation_method(
    "smoothgradcam++",
    label="Smooth Grad-CAM++",
    paper="Omeiza et al., 2019, arXiv:1908.01224",
    cost=f"1 forward + {SMOOTH_GRADCAMPP_SAMPLES} forwards and backwards of noisy inputs per layer",
    samples=SMOOTH_GRADCAMPP_SAMPLES,
    per_channel=False,
    stochastic=True,
)
def _smooth_gradcam_plus_plus(e: LayerEvidence) -> torch.Tensor:
    """Smooth Grad-CAM++: Grad-CAM++ with its derivatives averaged over noisy copies of the input (SmoothGrad;
    Omeiza et al. 2019): ``sum_c w_c A_c`` with ``w_c = sum_ij alpha_cij relu(G1_cij)``,
    ``alpha = G2 / (2 G2 + sum_ij(A_c) G3)`` (1e-6 in the denominator, 0 where ``G2 = 0``) and
    ``Gp = mean_i g(x + d_i)^p``, ``g`` the gradient of the explained logit with respect to the layer's output,
    ``d_i ~ N(0, SMOOTH_GRADCAMPP_STD^2)`` per input value, ``n_samples`` copies; ``A`` are the activations of the
    clean input. With one sample and no noise it is camlib's (pytorch-grad-cam's) Grad-CAM++.

    torch-cam 0.5.0's ``SmoothGradCAMpp`` differs in three ways, so camlib does not equal it (tests/test_cam_methods.py
    shows both): it takes ``relu`` of the last noisy copy's gradients instead of their mean, its map multiplies the
    last noisy copy's activations instead of the clean input's, and its denominator is ``sum_ij(A G3)`` instead of
    ``sum_ij(A) G3`` (Grad-CAM++'s eq. 19).

    Noise: for each image (and layer) a ``torch.Generator`` seeded with ``seed``; sample ``i`` is
    ``SMOOTH_GRADCAMPP_STD * randn(C_in, H, W)`` from it, in float32 (the same draws for every image).
    Cost: ``n_samples`` forwards and backwards per image and layer, ``batch_size`` noisy copies per pass."""
    acts = e.activations
    raws = []
    for b, target in enumerate(e.targets):
        generator = torch.Generator().manual_seed(e.seed)
        noise = [
            SMOOTH_GRADCAMPP_STD * torch.randn(e.x.shape[1:], generator=generator, dtype=torch.float32)
            for _ in range(e.n_samples)
        ]
        moments = torch.zeros((3, *acts.shape[1:]), dtype=acts.dtype, device=acts.device)
        for start in range(0, e.n_samples, e.batch_size):
            draws = torch.stack(noise[start : start + e.batch_size]).to(e.x)
            _, grads = e.gradients_at(e.x[b] + draws, [target] * len(draws))
            moments += torch.stack([grads.sum(dim=0), (grads**2).sum(dim=0), (grads**3).sum(dim=0)]).to(acts)
            e.progress.step()
        mean_grad, grads_2, grads_3 = moments / e.n_samples
        sum_acts = acts[b].sum(dim=(1, 2), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + sum_acts * grads_3 + 1e-6)
        alpha = torch.where(grads_2 != 0, alpha, torch.zeros_like(alpha))
        raws.append((alpha * torch.relu(mean_grad)).sum(dim=(1, 2)))
    return _weighted_sum(torch.stack(raws), acts, e)


SESS_SCALES = 12  # pytorch-grad-cam 1.5.7's SESS defaults: 12 scales, from the window size up in steps of


SESS_SCALE_STEP = 2 / 7  # 2/7 of the window (224, 288, ..., 928 px for a 224 px input)


SESS_BLUR_SIZE, SESS_BLUR_SIGMA = 11, 5.0  # and its final Gaussian blur (cv2.GaussianBlur((11, 11), 5))


@perturbation_method(
    "sess",
    label="SESS (Grad-CAM, multi-scale)",
    paper="Tursun et al., ECCV 2022, arXiv:2207.01769",
    cost=f"1 forward + {SESS_SCALES} scales x their patches x (1 forward + 1 forward and backward): ~122 patches "
    "at 224 px (very slow)",
    samples=SESS_SCALES,
    per_channel=False,
    forwards_per_sample=20,
    batched=False,
)
def _sess(e: LayerEvidence) -> torch.Tensor:
    """SESS (Saliency Enhancing with Scaling and Sliding): the image resized so its shorter side is each of
    ``n_samples`` scales (``window * (1 + i * SESS_SCALE_STEP)``, ``window = min(H, W)``), cut into ``window``-sized
    patches by a sliding window (stride ``window``, border windows shifted back inside), each patch's Grad-CAM map
    (camlib's, at the patch size) weighted by the patch's softmax score of the class over the best patch's, pasted back
    at its place and resized to the input, the positive values averaged per pixel over the patches that cover them,
    then a Gaussian blur (11 px, sigma 5) (Tursun et al. 2022), as pytorch-grad-cam 1.5.7's ``SESS`` with its
    defaults (base Grad-CAM, no pre-filtering, theta 0, mean fusion). Returns ``(B, H, W)``: the raw map is at the
    input size.

    Progress steps once per scale and image. Raises ``MethodError`` for token layers on a non-square input (the
    square patches change the patch grid's shape)."""
    height, width = int(e.x.shape[-2]), int(e.x.shape[-1])
    if e.layout is not None and e.layout.kind == "tokens" and height != width:
        raise MethodError("SESS cuts square patches; on a token layer it needs a square input")
    from torchvision.transforms.functional import resize  # imported here: torchvision's import costs 1.3 s

    if e.logits is None or e.logits.dim() != 2 or e.logits.shape[1] < 2:
        raise MethodError(
            "SESS weighs each patch by the softmax of the model's class scores (as pytorch-grad-cam's default), so it "
            "needs a model that returns (B, num_classes) logits of 2 classes or more; use Grad-CAM with targets= for "
            "other outputs"
        )
    window = min(height, width)
    step = int(round(window * SESS_SCALE_STEP))
    scales = [window + step * i for i in range(e.n_samples)]
    raws = []
    for b, target in enumerate(e.targets):
        patches: list[list[tuple[torch.Tensor, tuple[int, int, int, int]]]] = []
        for scale in scales:
            scaled = resize(_upcast(e.x[b : b + 1]), scale).to(e.x.dtype)
            sh, sw = int(scaled.shape[-2]), int(scaled.shape[-1])
            patches.append(
                [
                    (scaled[0, :, y : y + window, x : x + window], (x, y, sw, sh))
                    for y in _window_starts(sh, window)
                    for x in _window_starts(sw, window)
                ]
            )
        every = torch.stack([patch for scale in patches for patch, _ in scale])
        scores = torch.cat(
            [
                target_scores(
                    [target] * len(every[start : start + e.batch_size]),
                    torch.softmax(_upcast(e.model(every[start : start + e.batch_size])), dim=-1),
                )
                for start in range(0, len(every), e.batch_size)
            ]
        ).clamp(min=0)
        best = scores.max()
        weights = scores / best if bool(best > 0) else torch.ones_like(scores)
        total = torch.zeros((height, width), dtype=torch.float32, device=e.x.device)
        counts = torch.zeros_like(total)
        first = 0
        for scale in patches:
            for start in range(0, len(scale), e.batch_size):
                chunk = scale[start : start + e.batch_size]
                acts, grads = e.gradients_at(torch.stack([patch for patch, _ in chunk]), [target] * len(chunk))
                maps, _ = _finish(_weighted_sum(grads.mean(dim=(2, 3)), acts, e).float(), (window, window))
                for k, (cam, (x, y, sw, sh)) in enumerate(zip(maps, (c for _, c in chunk), strict=True)):
                    canvas = torch.zeros((sh, sw), dtype=torch.float32, device=cam.device)
                    canvas[y : y + window, x : x + window] = cam * weights[first + start + k].float()
                    # cv2's resize, as pytorch-grad-cam: the fusion averages each pixel over the patches whose
                    # resized map is > 0 there, so the resize's rounding next to exact zeros decides the counts
                    # (torch's bilinear differs from cv2's by ~1e-5 there, which changed 19% of a DeiT map).
                    pasted = torch.from_numpy(cv2.resize(canvas.cpu().numpy(), (width, height))).to(total.device)
                    positive = pasted > 0
                    total += torch.where(positive, pasted, 0.0)
                    counts += positive
            first += len(scale)
            e.progress.step()
        fused = torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
        raws.append(_gaussian_blur(fused, SESS_BLUR_SIZE, SESS_BLUR_SIGMA))
    return torch.stack(raws)


def _window_starts(length: int, window: int) -> list[int]:
    """The starts of ``window``-sized windows with stride ``window`` along ``length``, the last shifted back inside
    (pytorch-grad-cam's ``window_starts``)."""
    starts = []
    for start in range(0, length, window):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (size, size), sigma)`` of an ``(H, W)`` map: a separable, normalised Gaussian kernel
    and reflected borders without repeating the edge (``BORDER_REFLECT_101``, torch's "reflect")."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image)
    padded = F.pad(image[None, None], (size // 2,) * 4, mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, size))
    return F.conv2d(rows, kernel.view(1, 1, size, 1))[0, 0]
