"""`make search`: Hydra's Optuna sweeper over a loss hyper-parameter, maximising the optimised metric; a trial
that fails is reported (its traceback in FAILED) and the search goes on."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, run_cli


@pytest.mark.slow
def test_an_optuna_search_survives_a_failing_trial_and_reports_the_best(tmp_path):
    tiny = [o for o in TINY_SYNTHETIC if not o.startswith("optimizer.lr")]  # the search sets the lr
    overrides = [
        "hparams_search=focal_optuna", *tiny, *QUIET_RUN, "data.generator.num_train=24",
        "data.generator.num_val=6", "trainer.max_epochs=1", f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=3",
        "optimizer.lr=choice(0.002,-1.0)",  # a negative lr fails when the optimizer is built
    ]  # fmt: skip
    run_cli("train", overrides)
    trials = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(trials) == 3
    failed = []
    for trial in trials:
        chosen = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        lr = next(float(o.split("=", 1)[1]) for o in chosen if o.startswith("optimizer.lr="))
        gamma = next(float(o.split("=", 1)[1]) for o in chosen if o.startswith("loss.gamma="))
        assert 0.5 <= gamma <= 5.0  # the search space of configs/hparams_search/focal_optuna.yaml
        assert (trial / "FAILED").is_file() == (lr < 0)
        failed.append(lr < 0)
        if lr > 0:
            assert yaml.safe_load((trial / "config.yaml").read_text())["loss"]["gamma"] == pytest.approx(gamma)
    assert any(failed) and not all(failed)  # the seeded sampler tried both
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == 0.002 and math.isfinite(best["best_value"])


@pytest.mark.parametrize("name", ["focal_optuna", "tversky_optuna", "dice_ce_optuna"])
def test_every_search_names_parameters_that_exist_and_maximises(name):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from segloss.utils.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, default="absent") != "absent", f"{name}: {key} is not in the config"
