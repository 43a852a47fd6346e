"""Untrusted files cannot run code; secrets never reach what a run writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from segloss.errors import ConfigError
from segloss.utils.secrets import REDACTED, redact
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, compose_config, run_cli

MARKER = Path(torch.__file__).parent / "segloss_security_test_marker"


class _RunsCode:
    """Unpickling this calls ``Path.touch(MARKER)``: a stand-in for any code an attacker would run."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


@pytest.fixture
def evil_checkpoint(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "payload": _RunsCode()}, path)
    MARKER.unlink(missing_ok=True)
    yield path
    MARKER.unlink(missing_ok=True)


@pytest.mark.parametrize("entry", ["eval", "predict", "train"])
def test_a_malicious_checkpoint_is_refused_by_eval_predict_and_resume(evil_checkpoint, tmp_path, entry):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 8)).save(tmp_path / "in" / "photo.png")
    extra = {"predict": [f"input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'out'}"]}.get(entry, [])
    if entry == "train":  # through the command line once: exit status 2, the message, no traceback
        proc = run_cli(entry, [f"ckpt_path={evil_checkpoint}", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        message = proc.stderr
    else:  # the same entry functions in this process (a payload that ran would touch MARKER here too)
        from segloss.eval import evaluate
        from segloss.predict import predict

        tiny = [*TINY_SYNTHETIC, f"paths.data_dir={tmp_path / 'data'}"]
        cfg = compose_config(entry, [*tiny, f"ckpt_path={evil_checkpoint}", *extra], tmp_path / "run")
        with pytest.raises(ConfigError) as err:
            (evaluate if entry == "eval" else predict)(cfg)
        message = str(err.value)
    assert "refusing to load" in message and "weights_only=True" in message
    assert not MARKER.exists()  # the payload never ran


def test_redaction_by_key_name_and_by_secret_value():
    secrets = {"hunter2-token-value"}
    config = {"logger": {"wandb": {"api_key": "abc", "project": "p"}}, "note": "x hunter2-token-value y",
              "tokens": 5, "lists": [{"password": "pw"}, "hunter2-token-value"], "monitor": "val/mIoU"}  # fmt: skip
    clean = redact(config, secrets)
    assert clean["logger"]["wandb"] == {"api_key": REDACTED, "project": "p"}
    assert clean["note"] == REDACTED and clean["lists"] == [{"password": REDACTED}, REDACTED]
    assert clean["tokens"] == 5 and clean["monitor"] == "val/mIoU"


@pytest.mark.slow
def test_secret_environment_variables_never_reach_the_run_directory(tmp_path):
    secrets = {"WANDB_API_KEY": "wandbkey0123456789abcdef", "SEGLOSS_TEST_TOKEN": "tok-7f3a9c-secret"}
    old = {k: os.environ.get(k) for k in secrets}
    os.environ.update(secrets)
    run = tmp_path / "run"
    overrides = [o for o in QUIET_RUN if o not in ("logger=csv", "print_config=false")] + [
        *TINY_SYNTHETIC, f"paths.data_dir={tmp_path / 'data'}", "logger=default", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
        "+extra.note=${oc.env:SEGLOSS_TEST_TOKEN}", "+extra.wandb_key=${oc.env:WANDB_API_KEY}",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    try:
        proc = run_cli("train", overrides)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    printed = proc.stdout + proc.stderr  # the config tree: what a terminal, a SLURM .out or a CI log keeps
    assert "extra" in printed and "note: '***'" in printed
    assert not [value for value in secrets.values() if value in printed]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and (run / "config.yaml").is_file()
    assert (run / "csv" / "hparams.yaml").is_file()
    for path in files:
        data = path.read_bytes()
        for value in secrets.values():
            assert value.encode() not in data, f"{value} found in {path}"
    assert "note: '***'" in (run / "config.yaml").read_text()
