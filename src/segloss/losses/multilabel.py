"""Multi-label (region-based) losses: one sigmoid per region, overlapping regions allowed.

Region-based training (Isensee et al., "nnU-Net for Brain Tumor Segmentation", BraTS 2020, LNCS 12659, 2021;
smp's ``mode="multilabel"``): the net has one output channel per *region* (for BraTS: whole tumour {1, 2, 3},
tumour core {2, 3}, enhancing tumour {3}), each channel an independent sigmoid, and the target is the stack of
the regions' binary masks. Regions may overlap or nest, which a softmax over classes cannot express.

The contract of these losses (it differs from the label-map contract of :mod:`segloss.losses`):

* ``logits``: float N×R×S… (any number ≥ 1 of spatial dims), one channel per region;
* ``target``: **multi-hot**, of the *same shape* N×R×S…, dtype uint8, bool or any integer type (int64 …), with
  values 0 (outside region r), 1 (inside) or ``ignore_index`` (default 255: unlabelled). Ignoring is per
  element (n, r, voxel): :meth:`segloss.utils.regions.Regions.to_multi_hot` writes the ignore value into every
  region channel of an unlabelled voxel, but a voxel may also be ignored in some regions only. A bool target
  holds no ignore value (every element counts). Soft (float) targets are refused.

Every loss reduces in float32 (float64 logits stay float64), leaves ignored elements out of every sum, mean,
count and sort, returns 0 (with a zero gradient) for an all-ignored batch, and raises ``ValueError`` on a wrong
shape or dtype (and :class:`segloss.errors.LabelValueError`, a ``ValueError``, on target values other than
0, 1 and ``ignore_index``; checked as :class:`segloss.losses._checks.TargetChecks` says). Below, V is the set of
non-ignored elements, z the logit, p = σ(z), y ∈ {0, 1} the target.

* :class:`MultiLabelBCELoss` — mean over V of the binary cross-entropy, optional ``pos_weight`` per region;
* :class:`MultiLabelDiceLoss` — soft Dice per region (batch statistics as nnU-Net's ``batch_dice``, or per
  image), averaged over the regions;
* :class:`MultiLabelFocalLoss` — the sigmoid focal loss of Lin et al. 2017 per element, mean over V;
* :class:`MultiLabelLovaszHingeLoss` — Berman et al. 2018's Lovász hinge per region;
* :func:`multilabel_dice_bce` — nnU-Net's region-based loss, BCE + Dice, as a
  :class:`segloss.losses.CompoundLoss` (which takes these terms as they are: it only calls them).

Per-region vectors (``pos_weight``, the focal ``alpha``) have R entries, one per region (not one per class of the
label space); they are checked against the logits' R at each call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segloss.errors import LabelValueError
from segloss.losses._checks import TargetChecks, at_least_float32
from segloss.losses._distributed import active, sum_over_ranks, sum_over_ranks_detached
from segloss.losses.compound import CompoundLoss

EXACT_FLOAT32 = 1 << 24  # integers up to 2^24 are exact in float32: longer Lovász rows count ranks in float64


def check_multilabel_target(
    logits: Tensor, target: Tensor, ignore_index: int = 255, check_values: bool | TargetChecks = True
) -> tuple[Tensor, Tensor]:
    """Validate a multi-hot target against region logits; return ``(valid, y)``.

    ``valid`` is the bool N×R×S… mask of the non-ignored elements V, ``y`` the float target (the logits' dtype
    after :func:`at_least_float32`), 1 inside the region and 0 elsewhere, ignored elements included. Shapes and
    dtypes are always checked; the values (0, 1 or ``ignore_index``) when ``check_values`` says so (a loss's
    :class:`TargetChecks`: every call on the CPU, the first ones on an accelerator; ``True``/``False``).
    """
    if logits.dim() < 3:
        raise ValueError(f"region logits must be N×R×spatial…, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"a multi-hot target must be uint8, bool or an integer type (0/1 and ignore_index), got {target.dtype}; "
            "soft targets are not supported by the multi-label losses"
        )
    if tuple(target.shape) != tuple(logits.shape):
        hint = ""
        if target.dim() == logits.dim() - 1 and tuple(target.shape) == (logits.shape[0], *logits.shape[2:]):
            hint = (
                " — it looks like a label map N×S…; convert it with "
                "segloss.utils.regions.Regions.to_multi_hot(label_map, ignore_index)"
            )
        raise ValueError(
            f"multi-hot target shape {tuple(target.shape)} must equal the logits' {tuple(logits.shape)} "
            f"(N×R×spatial…, one channel per region){hint}"
        )
    if target.dtype == torch.bool:
        valid = torch.ones_like(target)
        return valid, target.to(at_least_float32(logits).dtype)
    valid = target != ignore_index
    due = check_values.due(target) if isinstance(check_values, TargetChecks) else bool(check_values)
    if due and target.numel():
        bad = valid & (target != 0) & (target != 1)
        if bool(bad.any()):
            values = torch.unique(target[bad]).tolist()[:10]
            raise LabelValueError(
                f"multi-hot target holds values {values} that are neither 0, 1 nor ignore_index={ignore_index}; "
                "build it with Regions.to_multi_hot (a label map passed as is would show its class ids here)"
            )
    y = ((target == 1) & valid).to(at_least_float32(logits).dtype)
    return valid, y


def _region_vector(name: str, values, regions: int, device, dtype) -> Tensor | None:
    """A per-region vector (length R, or one value for every region) broadcast to 1×R×1…; None stays None."""
    if values is None:
        return None
    vector = torch.as_tensor(values, dtype=dtype, device=device).reshape(-1)
    if vector.numel() not in (1, regions):
        raise ValueError(f"{name} has {vector.numel()} entries but the logits have R={regions} regions; "
                         "give one value per region (or a single value for all)")  # fmt: skip
    return vector.expand(regions)


def _as_buffer(values) -> Tensor | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return torch.tensor([float(values)])
    return torch.as_tensor(list(values) if not isinstance(values, Tensor) else values, dtype=torch.float32)


def _masked_mean(loss: Tensor, valid: Tensor) -> Tensor:
    """Σ_V loss / |V|; 0 (and a zero gradient) when V is empty. ``torch.where`` keeps a non-finite value of an
    ignored element (e.g. −∞ logits there) out of the sum and of the gradient."""
    total = torch.where(valid, loss, torch.zeros_like(loss)).sum()
    return total / valid.sum().clamp_min(1).to(loss.dtype)


class MultiLabelBCELoss(nn.Module):
    """Binary cross-entropy per region element, mean over the non-ignored elements V:

        L = (1/|V|) Σ_{(n,r,i)∈V} −[w_r y log σ(z) + (1 − y) log(1 − σ(z))]

    with ``pos_weight`` w_r (torch's ``BCEWithLogitsLoss`` convention: it scales the positive term only; one value
    per region, or one for all; default 1). The mean divides by |V| (elements, not weights), as
    ``binary_cross_entropy_with_logits(reduction="mean")`` does and as nnU-Net's ``DC_and_BCE_loss`` does without
    an ignore label (its ignore-label branch divides the masked sum by the number of labelled *voxels*, which is R
    times this value). Computed from the logits (log-sum-exp stable), float32; 0 for an all-ignored batch.

    Args:
        pos_weight: w_r, a float or R floats, or None.
        ignore_index: the target value of unlabelled elements.
        check_values: verify target values (:class:`TargetChecks`).
    """

    def __init__(
        self, pos_weight: Sequence[float] | float | None = None, ignore_index: int = 255, check_values: bool = True
    ) -> None:
        super().__init__()
        self.register_buffer("pos_weight", _as_buffer(pos_weight), persistent=False)
        self.ignore_index, self.check_values = ignore_index, TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, y = check_multilabel_target(logits, target, self.ignore_index, self.check_values)
        z = at_least_float32(logits)
        weight = _region_vector("pos_weight", self.pos_weight, z.shape[1], z.device, z.dtype)
        if weight is not None:
            weight = weight.view(1, -1, *(1,) * (z.dim() - 2))
        bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=weight, reduction="none")
        return _masked_mean(bce, valid)


class MultiLabelDiceLoss(nn.Module):
    """Soft Dice per region (Milletari et al., V-Net, 2016, linear denominator as nnU-Net), mean over regions.

    With p = σ(z) and sums over the non-ignored elements of region r,

        I_r = Σ p·y,   P_r = Σ p,   G_r = Σ y,   Dice_r = (2 I_r + s) / (P_r + G_r + s),   L = mean (1 − Dice_r)

    * ``per_image=False`` (default): the sums run over the batch and space, one Dice per region — nnU-Net's
      ``batch_dice=True`` (its ``MemoryEfficientSoftDiceLoss``; under DDP the sums of the global batch, as
      nnU-Net's ``ddp=True``). The mean runs over the regions that have a non-ignored element.
    * ``per_image=True``: one Dice per (image, region), over space only (nnU-Net's ``batch_dice=False``); the
      mean runs over the (image, region) pairs that have a non-ignored element.

    nnU-Net returns −mean Dice; 1 − mean Dice differs by a constant (same gradient). s = ``smooth`` (nnU-Net's
    1e-5) in numerator and denominator. There is no background channel to drop: every channel is a region, as
    nnU-Net's ``do_bg=True`` for regions. A region empty in the target (G_r = 0) still counts: its Dice is
    s / (P_r + s) ≈ 0 as soon as anything is predicted there (false positives are punished). A region with
    P_r = G_r = 0 scores exactly 1 (the limit s → 0⁺, finite also for s = 0, with a zero gradient).
    """

    def __init__(
        self, smooth: float = 1e-5, per_image: bool = False, ignore_index: int = 255, check_values: bool = True
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be ≥ 0, got {smooth}")
        self.smooth, self.per_image = float(smooth), bool(per_image)
        self.ignore_index, self.check_values = ignore_index, TargetChecks(check_values)

    def region_sums(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(I, P, G, counted)``: float sums of shape (R,) (batch) or (N, R) (per image) and the bool mask of
        the entries that have non-ignored elements."""
        valid, y = check_multilabel_target(logits, target, self.ignore_index, self.check_values)
        z = at_least_float32(logits)
        p = torch.where(valid, z.sigmoid(), torch.zeros_like(z))
        dims = tuple(range(2, z.dim())) if self.per_image else (0, *range(2, z.dim()))
        counted = valid.flatten(2).any(-1)  # (N, R): which (image, region) pairs have non-ignored elements
        if not self.per_image:
            counted = counted.any(0)
        return (p * y).sum(dims), p.sum(dims), y.sum(dims), counted

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        inter, p_sum, ground, counted = self.region_sums(logits, target)
        if not self.per_image and active(self):  # DDP: the statistics of the global batch (nnU-Net's ddp=True)
            inter, p_sum, ground = sum_over_ranks(torch.stack([inter, p_sum, ground])).unbind(0)
            counted = sum_over_ranks_detached(counted.long()) > 0
        # P = G = 0 (hence I = 0): score 1 exactly; `where` on the inputs keeps 0/0 out of value and gradient
        empty = (p_sum == 0) & (ground == 0)
        one = torch.ones((), dtype=inter.dtype, device=inter.device)
        inter, p_sum, ground = (torch.where(empty, one, x) for x in (inter, p_sum, ground))
        dice = (2 * inter + self.smooth) / (p_sum + ground + self.smooth)
        weight = counted.to(dice.dtype)
        return ((1 - dice) * weight).sum() / weight.sum().clamp_min(1.0)


class MultiLabelFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) per element:

        p_t = p if y = 1 else 1 − p,   α_t = α_r if y = 1 else 1 − α_r,   ℓ = −α_t (1 − p_t)^γ log p_t

    and L = mean over the non-ignored elements V (as torchvision's ``sigmoid_focal_loss(reduction="mean")``,
    which averages over all elements). ``alpha`` None (default) means α_t = 1 (no weighting; the paper's detection
    setting used α = 0.25); a float applies to every region, a sequence gives α_r per region. γ = 0 with
    ``alpha=None`` equals :class:`MultiLabelBCELoss` exactly. log p_t = −softplus(−(2y − 1) z); 1 − p_t is
    −expm1(log p_t), floored at the smallest normal float so that γ < 1 keeps a finite gradient at p_t = 1.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | float | None = None,
        ignore_index: int = 255,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be ≥ 0, got {gamma}")
        vector = _as_buffer(alpha)
        if vector is not None and not bool(((vector >= 0) & (vector <= 1)).all()):
            raise ValueError(f"alpha must lie in [0, 1] (α for positives, 1 − α for negatives), got {alpha}")
        self.gamma, self.ignore_index, self.check_values = float(gamma), ignore_index, TargetChecks(check_values)
        # not named `alpha`: segloss.build checks attributes of that name against data.num_classes (classes, not
        # regions)
        self.register_buffer("region_alpha", vector, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, y = check_multilabel_target(logits, target, self.ignore_index, self.check_values)
        z = at_least_float32(logits)
        log_pt = -F.softplus(-(2 * y - 1) * z)
        gap = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
        loss = -torch.pow(gap, self.gamma) * log_pt
        alpha = _region_vector("alpha", self.region_alpha, z.shape[1], z.device, z.dtype)
        if alpha is not None:
            alpha = alpha.view(1, -1, *(1,) * (z.dim() - 2))
            loss = loss * (y * alpha + (1 - y) * (1 - alpha))
        return _masked_mean(loss, valid)


def lovasz_hinge_rows(errors: Tensor, positive: Tensor) -> Tensor:
    """The Lovász hinge of each row of ``errors`` (rows × elements, the hinge errors relu(1 − z(2y − 1)), 0 on
    ignored elements) with ``positive`` the bool ground truth (False on ignored elements).

    Berman, Rannen Triki & Blaschko, "The Lovász-Softmax loss", CVPR 2018: sort the errors in decreasing order
    (e₁ ≥ e₂ ≥ …, indicators g_k), J_k = 1 − (Σg − Σ_{j≤k} g_j) / (Σg + Σ_{j≤k} (1 − g_j)) (the Jaccard loss of
    predicting the first k elements positive), ∇_k = J_k − J_{k−1} (J₀ = 0), loss = Σ_k e_k ∇_k, the Lovász
    extension of the Jaccard loss at the errors. Ignored elements have e = 0 and g = 0: they sort behind every
    positive error and change neither J for the elements before them nor the sum. The order and ∇ are computed
    without autograd (the extension is linear in e for a fixed order), autograd sees Σ e·∇ only.
    """
    with torch.no_grad():
        order = errors.detach().argsort(dim=-1, descending=True)
        count_dtype = torch.float64 if errors.shape[-1] > EXACT_FLOAT32 else errors.dtype
        g = positive.gather(-1, order).to(count_dtype)
        cum_g = g.cumsum(-1)
        k = torch.arange(1, errors.shape[-1] + 1, device=errors.device, dtype=count_dtype)
        total = cum_g[..., -1:]
        jaccard = 1 - (total - cum_g) / (total + k - cum_g)  # the denominator is ≥ k ≥ 1
        grad = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1).to(errors.dtype)
    return (errors.gather(-1, order) * grad).sum(-1)


class MultiLabelLovaszHingeLoss(nn.Module):
    """Lovász hinge (Berman et al., CVPR 2018) for every region, the convex surrogate of its Jaccard loss.

    Hinge errors e = relu(1 − z·(2y − 1)) on the logits of region r; the Lovász extension of region r's
    foreground Jaccard loss at e (:func:`lovasz_hinge_rows`).

    * ``per_image=False`` (default): each region's elements are flattened over the whole batch into one row
      (the paper's ``lovasz_hinge(per_image=False)`` per region); L = mean over the regions with non-ignored
      elements. Under DDP each rank sorts its own shard (the rows are not gathered).
    * ``per_image=True``: one row per (image, region), as the paper's default ``per_image=True``; L = mean over
      the (image, region) rows with non-ignored elements.

    A row whose target is empty has J_k = 1 for every k, so its loss is the largest error: predicted positives
    are punished. Ranks are counted in float32 up to 2^24 elements per row and in float64 beyond (exact).
    """

    def __init__(self, per_image: bool = False, ignore_index: int = 255, check_values: bool = True) -> None:
        super().__init__()
        self.per_image, self.ignore_index, self.check_values = bool(per_image), ignore_index, TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid, y = check_multilabel_target(logits, target, self.ignore_index, self.check_values)
        z = at_least_float32(logits)
        n, r = z.shape[:2]
        hinge = F.relu(1 - z * (2 * y - 1))
        errors = torch.where(valid, hinge, torch.zeros_like(hinge)).reshape(n, r, -1)
        positive = (y > 0).reshape(n, r, -1)
        valid = valid.reshape(n, r, -1)
        if self.per_image:
            rows = (errors.reshape(n * r, -1), positive.reshape(n * r, -1), valid.reshape(n * r, -1))
        else:  # region-major: one row per region over every image of the batch
            rows = tuple(x.transpose(0, 1).reshape(r, -1) for x in (errors, positive, valid))
        errors, positive, valid = rows
        per_row = lovasz_hinge_rows(errors, positive)
        counted = valid.any(-1).to(per_row.dtype)
        return (per_row * counted).sum() / counted.sum().clamp_min(1.0)


def multilabel_dice_bce(
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1e-5,
    per_image: bool = False,
    pos_weight: Sequence[float] | float | None = None,
    ignore_index: int = 255,
    check_values: bool = True,
) -> CompoundLoss:
    """nnU-Net's region-based loss (``DC_and_BCE_loss``: BCE + soft Dice with batch statistics, equal weights):
    ``CompoundLoss({"bce": MultiLabelBCELoss, "dice": MultiLabelDiceLoss})``, L = w_bce·BCE + w_dice·(1 − Dice).
    The terms are logged separately (``<stage>/loss/bce``, ``…/dice``) like every compound's. The same loss from a
    config: ``configs/loss/dice_bce_regions.yaml``."""
    if not math.isfinite(bce_weight) or not math.isfinite(dice_weight):
        raise ValueError(f"weights must be finite, got bce_weight={bce_weight}, dice_weight={dice_weight}")
    terms = {
        "bce": MultiLabelBCELoss(pos_weight=pos_weight, ignore_index=ignore_index, check_values=check_values),
        "dice": MultiLabelDiceLoss(
            smooth=smooth, per_image=per_image, ignore_index=ignore_index, check_values=check_values
        ),
    }
    return CompoundLoss(terms, {"bce": bce_weight, "dice": dice_weight})
