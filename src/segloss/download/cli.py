"""Entry point of ``make download``: ``python -m segloss.download [download=NAME] [weights=ENC[,ENC]]
[weights_from=EXPERIMENT]`` with Hydra overrides (``download.base_url=…``, ``paths.data_dir=…``).

A dataset lands under ``paths.data_dir`` (``DATA_ROOT``) where its ``configs/data/<name>.yaml`` looks
for it; weights land in ``paths.weights_dir``, where model building reads them. The command ends by
printing the next one (``make train EXP=…``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from segloss.download.fetch import console
from segloss.errors import ConfigError
from segloss.utils.config import CONFIG_DIR, report_user_errors, set_environment

set_environment()


def encoders_to_fetch(cfg: DictConfig) -> list[str]:
    """``weights`` (comma list) plus the encoder named by the experiment ``weights_from``, if any."""
    names = [n.strip() for n in str(cfg.get("weights") or "").split(",") if n.strip()]
    if cfg.get("weights_from"):
        from hydra import compose

        train_cfg = compose("train", overrides=[f"experiment={cfg.weights_from}"])
        encoder = train_cfg.model.net.get("encoder_name")
        if encoder is None:
            raise ConfigError(
                f"experiment {cfg.weights_from} builds {train_cfg.model.net._target_}, which has no pretrained "
                "encoder to download"
            )
        names.append(str(encoder))
    return list(dict.fromkeys(names))


def run(cfg: DictConfig) -> None:
    """Download what ``cfg`` asks for (see the module docstring)."""
    from segloss.download.dataset import download_dataset
    from segloss.download.weights import download_weights

    encoders = encoders_to_fetch(cfg)
    if not cfg.get("download") and not encoders:
        raise ConfigError(
            "nothing to download: name a dataset (make download DATA=voc|voc_aug|msd|kvasir|cityscapes) or encoder "
            "weights (make download WEIGHTS=resnet50, or EXP=<experiment> for the encoder it uses)"
        )
    if cfg.get("download"):
        download_dataset(cfg.download, Path(cfg.paths.data_dir))
    for encoder in encoders:
        download_weights(encoder, cfg.weights_variant, Path(cfg.paths.weights_dir), cfg.get("weights_base_url"))
    if encoders:
        console.print(
            f"runs read the weights from paths.weights_dir={cfg.paths.weights_dir}; train with them offline "
            f"(HF_HUB_OFFLINE=1 is fine): add model.net.encoder_weights={cfg.weights_variant}"
        )
    if cfg.get("download"):
        console.print(f"next: [bold]{cfg.download.next}[/bold]")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="download")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        run(cfg)
