"""The family of a loss preset, said by its config (``family:`` in ``configs/loss/<name>.yaml``).

The taxonomy of Ma et al. (2021), "Loss odyssey in medical image segmentation" (Medical Image Analysis 71):
distribution-based (CE, focal, OHEM, …), region-based (Dice, Tversky, …; Lovász-Softmax is a convex surrogate
of the IoU and clDice an overlap of skeletons, so both are region-based), boundary-based (boundary loss,
Hausdorff-DT) and compound (sums of the others; Unified Focal unifies CE and Dice terms). A run is tagged with
its loss's family (W&B tags, ``config.yaml``); a loss config of one's own without the key is ``other``.

The key describes the config, not the loss object: it is taken out before the loss is built
(:func:`without_family`).
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, open_dict

from segloss.utils.rules import Rule, one_of

FAMILIES = ("distribution-based", "region-based", "boundary-based", "compound")
KEY = "family"
OTHER = "other"
FAMILY_RULE = Rule("loss.family", one_of(*FAMILIES, allow_none=True), f"one of {list(FAMILIES)} or null",
                   "loss.family=region-based")  # fmt: skip


def loss_family(loss_cfg: DictConfig | None) -> str:
    """The ``family`` a loss config names; :data:`OTHER` where it names none.

    Raises:
        ConfigError: the config names a family not in :data:`FAMILIES`."""
    value = loss_cfg.get(KEY) if isinstance(loss_cfg, DictConfig) else None
    FAMILY_RULE.require(value)
    return str(value) if value else OTHER


def without_family(loss_cfg: DictConfig) -> DictConfig:
    """A copy of the loss config without its ``family`` key: what the loss's constructor receives."""
    loss_cfg = copy.deepcopy(loss_cfg)
    if KEY in loss_cfg:
        with open_dict(loss_cfg):
            del loss_cfg[KEY]
    return loss_cfg
