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
import re
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 302 itself is the answer (urllib raises it as an HTTPError)


def login_url(spec: DictConfig) -> str:
    """Where the credentials may be posted: ``download.login_url`` when the user names one, else the official
    site's form over https — never a mirror of ``download.base_url`` on its own."""
    login = spec.login
    if spec.get("login_url"):
        return str(spec.login_url)
    official = str(login.official_url).rstrip("/")
    base = str(spec.base_url).rstrip("/")
    if base != official:
        raise DownloadError(
            f"download.base_url={base} is not {login.site}'s own site ({official}), and the credentials in "
            f"{login.username_env}/{login.password_env} are sent only there. If that mirror is yours, name its "
            f"login form explicitly (download.login_url=…/{login.url}); or download the packages by hand "
            f"({login.manual_url})"
        )
    if not official.startswith("https://"):
        raise DownloadError(f"login.official_url={official} is not https: credentials are never sent in clear")
    return f"{official}/{login.url}"


def logged_in_opener(spec: DictConfig, user: str, password: str):
    """A urllib opener holding the session cookie of a successful login (the site answers the form with a
    redirect, 302, as the official client requires; a page in its place is a failed login)."""
    from segloss.download.fetch import default_opener

    login, url = spec.login, login_url(spec)
    jar = http.cookiejar.CookieJar()
    poster = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPCookieProcessor(jar))
    form = {login.user_field: user, login.password_field: password, **dict(login.get("extra_fields") or {})}
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    status = None
    try:
        with poster.open(request, timeout=60) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
        err.close()
        if status not in (301, 302, 303, 307, 308):
            raise DownloadError(f"could not log in at {url}: HTTP {status}; check the site or download by hand "
                                f"({login.manual_url})") from None  # fmt: skip
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(
            f"could not log in at {url} ({getattr(err, 'reason', err)}). Check the network and the credentials in "
            f"{login.username_env}/{login.password_env}, or download the packages by hand ({login.manual_url})"
        ) from err
    if status not in (301, 302, 303, 307, 308) or not len(jar):
        raise DownloadError(
            f"the login at {url} gave no session (it answered {status} without the redirect of a successful "
            f"login): check {login.username_env} and {login.password_env} (the account must be activated at "
            f"{login.manual_url}), or download the packages by hand"
        )
    return default_opener(urllib.request.HTTPCookieProcessor(jar))


def published_md5(opener, url: str, site: str) -> str:
    """The md5 the site publishes for a package (``md5-sum/?packageID=N``: the first word of the answer)."""
    try:
        with opener.open(urllib.request.Request(url), timeout=60) as response:
            words = response.read(4096).decode(errors="replace").split()
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"could not read {site}'s md5 of a package at {url} ({getattr(err, 'reason', err)}); "
                            "re-run, or download by hand") from err  # fmt: skip
    if not words or not re.fullmatch(r"[0-9a-fA-F]{32}", words[0]):
        raise DownloadError(f"{url} did not answer with an md5 ({' '.join(words[:3])!r}…); the package cannot be "
                            "verified: re-run, or download it by hand and pin download.md5")  # fmt: skip
    return words[0].lower()
