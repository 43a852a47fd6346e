"""Sites that need an account (Cityscapes): log in with credentials from the environment, in memory only.

The username and password are read from the environment variables that the spec names
(``CITYSCAPES_USERNAME``, ``CITYSCAPES_PASSWORD``; ``*_PASSWORD`` values are redacted from everything a run
writes by :mod:`segloss.utils.secrets`), posted once to the login form, and the session cookie is kept in
an in-memory ``http.cookiejar.CookieJar``: neither reaches a file, a log or a config. The form's fields
(``username``, ``password``, ``submit=Login``) are those of the Cityscapes site as used by its documented
``wget --post-data`` recipe and cityscapesScripts' ``csDownload``.
"""

from __future__ import annotations

import http.cookiejar
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from omegaconf import DictConfig

from segloss.errors import DownloadError


def credentials(login: DictConfig) -> tuple[str, str] | None:
    """(username, password) from the environment, or None when either is unset."""
    user, password = os.environ.get(login.username_env), os.environ.get(login.password_env)
    return (user, password) if user and password else None


def manual_instructions(login: DictConfig, missing: list[str], folder: Path) -> str:
    """The message for a run without credentials: what to fetch by hand and where to put it."""
    return (
        f"{login.site} needs an account. Either set {login.username_env} and {login.password_env} in the "
        f"environment (they are used for this run only, never written anywhere) and re-run, or download "
        f"{', '.join(missing)} by hand from {login.manual_url} and put the file(s) into {folder}/; the same "
        "command then verifies and unpacks them"
    )


def logged_in_opener(base_url: str, login: DictConfig, user: str, password: str):
    """A urllib opener holding the session cookie of a successful login at ``base_url/login.url``."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    url = f"{base_url.rstrip('/')}/{login.url}"
    form = {login.user_field: user, login.password_field: password, **dict(login.get("extra_fields") or {})}
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        opener.open(request, timeout=60).close()
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(
            f"could not log in at {url} ({getattr(err, 'reason', err)}). Check the network and the credentials in "
            f"{login.username_env}/{login.password_env}, or download the packages by hand ({login.manual_url})"
        ) from err
    if not len(jar):
        raise DownloadError(
            f"the login at {url} gave no session: check {login.username_env} and {login.password_env} (the account "
            f"must be activated at {login.manual_url}), or download the packages by hand"
        )
    return opener
