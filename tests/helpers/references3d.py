"""Float64 references of every loss preset, written from the papers' formulas over all voxels of N×C×S… inputs
(any number of spatial dims, 3-D volumes in tests/test_losses_3d.py).

Each reference takes float64 ``logits`` (with ``requires_grad`` for a gradient check) and an int64 ``target``
(``IGNORE`` marks ignored voxels) and returns a 0-dim float64 tensor, differentiable by autograd. They use none
of the library's code: the non-ignored voxels are picked by boolean indexing, classes are looped over, distance
maps are scipy's ``distance_transform_edt`` of each whole volume and the soft skeleton is built from
``F.max_pool2d``/``F.max_pool3d`` as the clDice authors describe it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

IGNORE = 255
S = 1e-5  # the region presets' smooth term


def voxels(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The non-ignored voxels of an N×C×S… tensor as a V×C matrix."""
    return x.movedim(1, -1)[valid]


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """N×K×S…: softmax over C ≥ 2 classes, or (1 − σ(z), σ(z)) for one sigmoid channel."""
    if logits.shape[1] == 1:
        return torch.cat([1 - logits.sigmoid(), logits.sigmoid()], 1)
    return logits.softmax(1)


def onehot(target: torch.Tensor, k: int) -> torch.Tensor:
    """float64 N×K×S… one-hot of the target, 0 in every class on ignored voxels."""
    return torch.stack([(target == c).double() for c in range(k)], 1)


def ce(logits, target, weight=None):
    """Σ_V w_t·(−log p_t) / Σ_V w_t."""
    valid = target != IGNORE
    log_p = voxels(logits.log_softmax(1), valid)
    t = target[valid]
    nll = -log_p[torch.arange(len(t)), t]
    w = torch.ones_like(nll) if weight is None else weight[t]
    return (w * nll).sum() / w.sum()


def bce(logits, target):
    """mean_V −[y log σ(z) + (1 − y) log(1 − σ(z))]."""
    valid = target != IGNORE
    z, y = logits[:, 0][valid], (target[valid] == 1).double()
    return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()


def _region_sums(logits, target):
    """Per class (I_c, P_c, G_c) over the valid voxels of the batch; one sigmoid channel: the foreground only."""
    valid = target != IGNORE
    if logits.shape[1] == 1:
        p, y = logits[:, 0].sigmoid()[valid][:, None], (target[valid] == 1).double()[:, None]
    else:
        p, y = voxels(logits.softmax(1), valid), voxels(onehot(target, logits.shape[1]), valid)
    return [((p[:, c] * y[:, c]).sum(), p[:, c].sum(), y[:, c].sum()) for c in range(p.shape[1])]


def dice(logits, target, log=False):
    """Milletari et al.: mean_c 1 − (2 I_c + s) / (P_c + G_c + s) (−log of the ratio with ``log``)."""
    per_class = []
    for i, p, g in _region_sums(logits, target):
        ratio = (2 * i + S) / (p + g + S)
        per_class.append(-torch.log(ratio) if log else 1 - ratio)
    return sum(per_class) / len(per_class)


def tversky(logits, target, alpha=0.3, beta=0.7, gamma=1.0):
    """Salehi et al. (Abraham & Khan with γ): mean_c (1 − (I + s) / (I + α FP + β FN + s))^(1/γ)."""
    per_class = [
        (1 - (i + S) / (i + alpha * (p - i) + beta * (g - i) + S)) ** (1 / gamma)
        for i, p, g in _region_sums(logits, target)
    ]
    return sum(per_class) / len(per_class)


def generalized_dice(logits, target):
    """Sudre et al.: 1 − (2 Σ w_c I_c + s) / (Σ w_c (P_c + G_c) + s), w_c = 1/G_c² (absent: largest finite)."""
    sums = _region_sums(logits, target)
    w = [1 / g**2 if g > 0 else math.inf for _, _, g in sums]
    largest = max(v for v in w if math.isfinite(v))
    w = [v if math.isfinite(v) else largest for v in w]
    num = 2 * sum(wc * i for wc, (i, _, _) in zip(w, sums)) + S
    den = sum(wc * (p + g) for wc, (_, p, g) in zip(w, sums)) + S
    return 1 - num / den


def focal(logits, target, gamma=2.0):
    """Lin et al.: mean_V −(1 − p_t)^γ log p_t."""
    valid = target != IGNORE
    log_p = voxels(logits.log_softmax(1), valid)
    t = target[valid]
    log_pt = log_p[torch.arange(len(t)), t]
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


def kl(logits, target, smoothing=0.1):
    """mean_V Σ_c q_c (log q_c − log p_c), q = (1 − ε) y + ε/C."""
    valid = target != IGNORE
    c = logits.shape[1]
    q = voxels(onehot(target, c), valid) * (1 - smoothing) + smoothing / c
    log_p = voxels(logits.log_softmax(1), valid)
    return (q * (q.log() - log_p)).sum(1).mean()


def mse(logits, target):
    """mean over valid voxels and classes of (p_c − y_c)²."""
    valid = target != IGNORE
    c = logits.shape[1]
    return ((voxels(logits.softmax(1), valid) - voxels(onehot(target, c), valid)) ** 2).mean()


def _lovasz_one(errors, fg):
    """Berman et al.: errors sorted in decreasing order dotted with the Lovász gradient of the Jaccard loss."""
    e, order = errors.sort(descending=True)
    g = fg[order]
    total = g.sum()
    jaccard = 1 - (total - g.cumsum(0)) / (total + (1 - g).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return (e * grad).sum()


def lovasz(logits, target, per_image=False):
    """Lovász-Softmax over the classes present in the (image's or batch's) valid ground truth."""
    p, y = class_probs(logits), onehot(target, class_probs(logits).shape[1])
    groups = [[n] for n in range(len(target))] if per_image else [list(range(len(target)))]
    values = []
    for images in groups:
        per_class = []
        for c in range(p.shape[1]):
            valid = [target[n] != IGNORE for n in images]
            fg = torch.cat([y[n, c][v] for n, v in zip(images, valid)])
            if fg.sum() == 0:
                continue
            errors = torch.cat([(y[n, c] - p[n, c]).abs()[v] for n, v in zip(images, valid)])
            per_class.append(_lovasz_one(errors, fg))
        if per_class:
            values.append(sum(per_class) / len(per_class))
    return sum(values) / len(values)


def _voxel_ce_and_pt(logits, target):
    valid = target != IGNORE
    log_p = voxels(logits.log_softmax(1), valid)
    t = target[valid]
    log_pt = log_p[torch.arange(len(t)), t]
    return -log_pt, log_pt.detach().exp()


def topk(logits, target, k=10.0):
    """nnU-Net's TopK: the mean of the largest ⌈k % · |V|⌉ voxel CE values."""
    values, _ = _voxel_ce_and_pt(logits, target)
    count = math.ceil(len(values) * k / 100)
    return values.sort(descending=True).values[:count].mean()


def ohem(logits, target, thresh=0.7, min_kept=100_000):
    """The voxels with p_t < thresh if there are at least min_kept of them, else the min_kept of lowest p_t."""
    values, p_true = _voxel_ce_and_pt(logits, target)
    if int((p_true < thresh).sum()) >= min_kept:
        keep = p_true < thresh
    else:
        keep = torch.zeros_like(p_true, dtype=torch.bool)
        keep[p_true.argsort()[: min(min_kept, len(p_true))]] = True
    return values[keep].mean()


def unified_focal(logits, target, weight=0.5, delta=0.6, gamma=0.5, eps=1e-6):
    """Yeung et al.'s asymmetric Unified Focal loss, background = class 0, every other class rare."""
    p = class_probs(logits)
    c = p.shape[1]
    y = onehot(target, c)
    valid = target != IGNORE
    focal_sum, tversky_sum, images = 0.0, 0.0, 0
    for n in range(len(target)):
        v = valid[n]
        for k in range(c):
            w = (1 - delta) if k == 0 else delta
            m = (1 - p[n, k][v]) ** gamma if k == 0 else 1.0
            focal_sum = focal_sum - (w * m * y[n, k][v] * p[n, k][v].log()).sum()
        if v.any():
            images += 1
            for k in range(c):
                pk, yk = p[n, k][v], y[n, k][v]
                tp, fn, fp = (pk * yk).sum(), ((1 - pk) * yk).sum(), (pk * (1 - yk)).sum()
                mti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
                tversky_sum = tversky_sum + ((1 - mti) if k == 0 else (1 - mti) ** (1 - gamma))
    return weight * tversky_sum / (images * c) + (1 - weight) * focal_sum / valid.sum()


def edt(mask: np.ndarray, spacing=None) -> np.ndarray:
    """scipy's EDT of a whole volume: distance of each True voxel to the nearest False one (0 on False)."""
    return distance_transform_edt(mask, sampling=spacing)


def kervadec_phi(region: np.ndarray, spacing=None) -> np.ndarray:
    """The boundary-loss authors' signed distance: d to G outside G, −(d to ∁G − 1) inside; 0 if empty or full."""
    if not region.any() or region.all():
        return np.zeros(region.shape)
    return edt(~region, spacing) * ~region - (edt(region, spacing) - 1) * region


def karimi_distance(region: np.ndarray, spacing=None) -> np.ndarray:
    """Distance to the region's boundary (inside: to ∁G, outside: to G); 0 if empty or full."""
    if not region.any() or region.all():
        return np.zeros(region.shape)
    return edt(region, spacing) + edt(~region, spacing)


def boundary(logits, target, spacing=None):
    """Kervadec et al.: (1/|V|) Σ_{x∈V} Σ_{c ≥ 1} φ_c(x) p_c(x), φ_c from each image's/volume's region of c."""
    p = class_probs(logits)
    valid = target != IGNORE
    total = 0.0
    for n in range(len(target)):
        for c in range(1, p.shape[1]):
            phi = torch.from_numpy(kervadec_phi((target[n] == c).numpy(), spacing))
            total = total + (phi * p[n, c])[valid[n]].sum()
    return total / valid.sum()


def hausdorff_dt(logits, target, alpha=2.0, spacing=None):
    """Karimi & Salcudean eq. 8: mean over c ≥ 1 and x ∈ V of (p − q)²·(d_p^α + d_q^α), d_p of {p > 0.5}."""
    p = class_probs(logits)
    valid = target != IGNORE
    total = 0.0
    classes = range(1, p.shape[1])
    for n in range(len(target)):
        for c in classes:
            truth = (target[n] == c).numpy()
            predicted = (p[n, c] > 0.5).detach().numpy()
            weight = karimi_distance(truth, spacing) ** alpha + karimi_distance(predicted, spacing) ** alpha
            error = (p[n, c] - torch.from_numpy(truth).double()) ** 2 * torch.from_numpy(weight)
            total = total + error[valid[n]].sum()
    return total / (valid.sum() * len(classes))


def _pool(x, kernel):
    """Stride-1 max-pool with a 'same' padding of −∞, 2-D or 3-D by the kernel's length."""
    pool = F.max_pool3d if len(kernel) == 3 else F.max_pool2d
    return pool(x, kernel, 1, tuple(k // 2 for k in kernel))


def soft_erode(x):
    """Shit et al.: the min of the axis-wise 3-wide min-pools (min-pool = −maxpool(−x))."""
    d = x.dim() - 2
    kernels = [tuple(3 if a == b else 1 for b in range(d)) for a in range(d)]
    pools = [-_pool(-x, k) for k in kernels]
    out = pools[0]
    for other in pools[1:]:
        out = torch.minimum(out, other)
    return out


def soft_dilate(x):
    """Shit et al.: the full 3×3(×3) max-pool."""
    return _pool(x, (3,) * (x.dim() - 2))


def soft_skeleton(x, iterations):
    """Shit et al.'s soft skeleton: S = relu(I − open(I)); then I ← erode(I), δ = relu(I − open(I)),
    S ← S + relu(δ − S·δ), ``iterations`` times (open = dilate ∘ erode)."""
    skeleton = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


def cldice(logits, target, alpha=0.5, iterations=3, smooth=1.0):
    """Shit et al.'s soft-clDice: mean over c ≥ 1 of (1 − α)(1 − softDice_c) + α(1 − clDice_c), batch sums,
    probabilities and labels zeroed on ignored voxels."""
    p = class_probs(logits)
    v = (target != IGNORE).double().unsqueeze(1)
    p, y = p * v, onehot(target, p.shape[1]) * v
    per_class = []
    for c in range(1, p.shape[1]):
        pc, yc = p[:, c : c + 1], y[:, c : c + 1]
        sp, sy = soft_skeleton(pc, iterations), soft_skeleton(yc, iterations)
        t_prec = ((sp * yc).sum() + smooth) / (sp.sum() + smooth)
        t_sens = ((sy * pc).sum() + smooth) / (sy.sum() + smooth)
        cl = 2 * t_prec * t_sens / (t_prec + t_sens)
        soft_dice = (2 * (pc * yc).sum() + smooth) / (pc.sum() + yc.sum() + smooth)
        per_class.append((1 - alpha) * (1 - soft_dice) + alpha * (1 - cl))
    return sum(per_class) / len(per_class)


BOUNDARY_EPOCH = 50  # boundary_gdl's schedules there: GDL weight 1 − 0.99·50/99 = 0.5, boundary 0.99·50/99 = 0.5

# The presets of configs/loss, each as its formula with the YAML's parameters (compounds: their weighted sums).
PRESETS = {
    "bce": bce,
    "bce_dice": lambda x, t: bce(x, t) + dice(x, t),
    "boundary_gdl": lambda x, t: 0.5 * generalized_dice(x, t) + 0.5 * boundary(x, t),
    "ce": ce,
    "ce_lovasz": lambda x, t: ce(x, t) + lovasz(x, t),
    "cldice": cldice,
    "dice": dice,
    "dice_ce": lambda x, t: ce(x, t) + dice(x, t),
    "dice_focal": lambda x, t: dice(x, t) + focal(x, t),
    "focal": focal,
    "focal_tversky": lambda x, t: tversky(x, t, 0.3, 0.7, 4 / 3),
    "hausdorff_dt": lambda x, t: dice(x, t) + 0.1 * hausdorff_dt(x, t),
    "kl_ls": kl,
    "log_dice_ce": lambda x, t: ce(x, t) + dice(x, t, log=True),
    "lovasz": lovasz,
    "mse": mse,
    "ohem": ohem,
    "topk": topk,
    "tversky": tversky,
    "unified_focal": unified_focal,
}
