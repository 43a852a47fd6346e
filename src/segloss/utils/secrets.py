"""Keep secrets out of everything a run writes: ``config.yaml``, logged hyperparameters, the W&B config.

A value is a secret when its key looks like one (``…key``, ``…token``, ``…secret``, ``…password``,
``api_key`` …, any case) or when it equals the value of an environment variable that holds one
(``WANDB_API_KEY`` and every ``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``) — so a secret that
reached the config through ``${oc.env:…}`` under an innocent name is caught too. Secrets are
replaced by ``"***"``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REDACTED = "***"
SECRET_NAME = re.compile(r"(^|[_.\-/])(api_?key|key|token|secret|password|passwd)$", re.IGNORECASE)
SECRET_ENV = re.compile(r"(^WANDB_API_KEY$|_(KEY|TOKEN|SECRET|PASSWORD)$)")


def secret_values(environ=None) -> set[str]:
    """Values of the environment variables that hold secrets (short ones ignored: not worth a match)."""
    environ = os.environ if environ is None else environ
    return {v for k, v in environ.items() if SECRET_ENV.search(k) and len(v) >= 6}


def redact(value, secrets: set[str] | None = None, key: str = ""):
    """A copy of ``value`` (nested dicts/lists of plain values) with every secret replaced."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v, secrets, key) for v in value)
    if isinstance(value, str):
        if (key and SECRET_NAME.search(key)) or any(s in value for s in secrets):
            return REDACTED
    elif key and SECRET_NAME.search(key) and value is not None:
        return REDACTED
    return value


def scrub_files(folder: Path) -> None:
    """Replace the values of secret environment variables in the YAML files of ``folder`` (Hydra's
    ``.hydra/`` copies of the config and the overrides as typed)."""
    secrets = secret_values()
    if not secrets or not folder.is_dir():
        return
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        clean = text
        for secret in secrets:
            clean = clean.replace(secret, REDACTED)
        if clean != text:
            path.write_text(clean)
