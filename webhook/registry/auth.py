"""Registry credentials and auth challenges: Docker `config.json`, `WWW-Authenticate` (pure).

Credentials come only from the one `config.json` the resolver is given (the chart mounts a
`dockerconfigjson` Secret from the webhook's own namespace). Credential helpers (`credsStore`,
`credHelpers`) are ignored on purpose: running programs named by a mounted file is not
something an admission webhook should do.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from webhook import logs
from webhook.registry.imageref import DOCKER_HUB, DOCKER_HUB_ALIASES

log = logs.get("registry")

# A mounted Secret changes in place; its file is looked at no more often than this.
RELOAD_INTERVAL = 10.0

# `auth-param = token "=" ( token / quoted-string )`, RFC 7235.
_AUTH_PARAM = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    """A username and password (or token) for one registry."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The value of an `Authorization: Basic` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """An auth challenge from a registry: `Basic` or `Bearer` with its parameters."""

    scheme: str
    params: dict[str, str]


def registry_key(server: str) -> str:
    """The host[:port] a `config.json` `auths` key names, with Docker Hub's aliases folded.

    Keys are spelt many ways (`https://index.docker.io/v1/`, `host:5000`, `http://host/v2/`).
    """
    host = server.split("://", 1)[-1].split("/", 1)[0].lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def _entry_credentials(server: str, entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        raise ValueError(f"auths[{server!r}] is not an object")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except ValueError as exc:
            raise ValueError(f"auths[{server!r}].auth is not base64 of user:password") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ValueError(f"auths[{server!r}].auth is not base64 of user:password")
        return Credentials(username, password)
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(secret, str) and user:
        return Credentials(user, secret)
    return None


def parse_docker_config(text: str) -> dict[str, Credentials]:
    """Credentials per registry host from the text of a Docker `config.json`.

    Entries without `auth` or `username`/`password` (e.g. only an `identitytoken`) are skipped.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"docker config is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("docker config is not a JSON object")
    auths = data.get("auths", {})
    if not isinstance(auths, dict):
        raise ValueError("docker config 'auths' is not an object")
    credentials: dict[str, Credentials] = {}
    for server, entry in auths.items():
        found = _entry_credentials(server, entry)
        if found is not None:
            credentials[registry_key(server)] = found
    return credentials


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a `WWW-Authenticate` header, or None when there is none."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    for match in _AUTH_PARAM.finditer(rest):
        name, quoted, bare = match.groups()
        if name.lower() in params:
            break  # a second challenge starts here
        value = quoted if quoted is not None else bare
        params[name.lower()] = re.sub(r"\\(.)", r"\1", value)
    return Challenge(scheme.lower(), params)


class CredentialStore:
    """Credentials from one Docker `config.json`, reloaded when the file changes.

    The first load happens at construction and fails loudly (a start-up error); a later
    reload that fails keeps the credentials already loaded, with a warning.
    """

    def __init__(self, path: str | None, *, reload_interval: float = RELOAD_INTERVAL) -> None:
        self._path = path
        self._interval = reload_interval
        self._checked = time.monotonic()
        self._mtime: float | None = None
        self._credentials: dict[str, Credentials] = {}
        if path is not None:
            try:
                self._load(path)
            except (OSError, ValueError) as exc:
                raise ValueError(f"docker config {path!r}: {exc}") from exc

    def _load(self, path: str) -> None:
        mtime = os.stat(path).st_mtime
        with open(path, encoding="utf-8") as handle:
            self._credentials = parse_docker_config(handle.read())
        self._mtime = mtime

    def get(self, domain: str) -> Credentials | None:
        """The credentials for an image's registry domain, if the config has any."""
        now = time.monotonic()
        if self._path is not None and now - self._checked >= self._interval:
            self._checked = now
            try:
                if os.stat(self._path).st_mtime != self._mtime:
                    self._load(self._path)
            except (OSError, ValueError) as exc:
                log.warning(
                    "docker config %r: %s; keeping the credentials loaded before", self._path, exc
                )
        return self._credentials.get(registry_key(domain))
