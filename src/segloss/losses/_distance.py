"""Exact Euclidean distance transforms for the distance-based losses, on the loss's device.

``distance_to(features)`` gives, for every pixel of a …×H×W boolean map, the Euclidean distance (in pixels)
to the nearest True pixel, or ``inf`` where there is none.

* On an accelerator it is computed where the tensors are, exact and separable (Saito & Toriwaki 1994;
  Meijster et al. 2000): along each row, g(y, x) = distance to the nearest feature of row y (two ``cummax``
  scans); then D(y, x)² = min over rows y' of (y − y')² + g(y', x)², a dense minimum in row chunks
  (O(H²·W) per map: vectorised and free of host syncs, which is what a GPU wants).
* On the CPU, where a host round trip costs nothing, each map goes to scipy's linear-time
  ``distance_transform_edt`` (Maurer et al. 2003) — the same distances (tested), 10–50× faster there for
  training crops.

Float32 holds the squared distances exactly up to 4096 px.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # bound on the temporary of the row minimum


def _row_distance(features: Tensor) -> Tensor:
    """Distance along the last axis to the nearest True pixel of the same row (inf if the row has none)."""
    w = features.shape[-1]
    position = torch.arange(w, device=features.device, dtype=torch.float32)
    none = torch.tensor(float("-inf"), device=features.device)
    left = torch.where(features, position, none).cummax(-1).values  # nearest feature at or left of x
    right = torch.where(features.flip(-1), position, none).cummax(-1).values.flip(-1)  # mirrored index
    right = (w - 1) - right  # back to positions; +inf where no feature on the right
    return torch.minimum(position - left, right - position)


@torch.no_grad()
def distance_to(features: Tensor) -> Tensor:
    """float32 Euclidean distance from each pixel to the nearest True pixel of ``features`` (…×H×W)."""
    if features.device.type == "cpu":
        return _distance_to_scipy(features)
    return _distance_to_dense(features)


def _distance_to_scipy(features: Tensor) -> Tensor:
    from scipy.ndimage import distance_transform_edt

    maps = features.reshape(-1, *features.shape[-2:]).numpy()
    out = np.full(maps.shape, np.inf, dtype=np.float32)
    for i, feature in enumerate(maps):
        if feature.any():
            out[i] = distance_transform_edt(~feature)
    return torch.from_numpy(out).view(features.shape)


def _distance_to_dense(features: Tensor) -> Tensor:
    h = features.shape[-2]
    g2 = _row_distance(features).square()  # …×H×W
    rows = torch.arange(h, device=features.device, dtype=torch.float32)
    lead = g2.shape[:-2]
    out = torch.empty_like(g2)
    chunk = max(1, min(h, CHUNK_ELEMENTS // max(g2.numel(), 1)))  # the temporary is g2.numel() × chunk
    for start in range(0, h, chunk):
        y = rows[start : start + chunk]
        dy2 = (y[:, None] - rows[None, :]).square()  # chunk × H (y, y')
        total = dy2.view(*(1,) * len(lead), len(y), h, 1) + g2.unsqueeze(-3)  # …×chunk×H×W
        out[..., start : start + len(y), :] = total.amin(-2)
    return out.sqrt_()


def signed_distance(region: Tensor) -> Tensor:
    """Kervadec et al.'s signed distance of a …×H×W region: the distance to the region outside it, minus
    (the distance to the outside − 1) inside it — so −(depth − 1) ≤ 0 inside, 0 on the inner boundary,
    > 0 outside; 0 everywhere for an empty or full region."""
    outside = distance_to(region)
    inside = distance_to(~region) - 1
    phi = torch.where(region, -inside, outside)
    defined = region.any(-2).any(-1) & (~region).any(-2).any(-1)
    return torch.where(defined[..., None, None], phi, 0.0)


def boundary_distance(region: Tensor) -> Tensor:
    """Unsigned distance to the region's boundary as Karimi & Salcudean (and MONAI) use it: distance to the
    nearest outside pixel inside, to the nearest inside pixel outside; 0 for an empty or full region."""
    field = torch.where(region, distance_to(~region), distance_to(region))
    defined = region.any(-2).any(-1) & (~region).any(-2).any(-1)
    return torch.where(defined[..., None, None], field, 0.0)
