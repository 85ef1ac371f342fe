"""Who reads the dashboard, and which projects they see: pure rules over ``dashboard`` of the configuration.

A reader is granted projects directly (``dashboard.users.<name>.projects``) and through groups
(``dashboard.groups``): the groups listed for the user there, and, for a single-sign-on user,
the groups the company's identity provider says they are in. ``*`` grants every project.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from domain.config import DashboardConfig

EVERY_PROJECT = "*"


@dataclass(frozen=True)
class Viewer:
    """A signed-in reader: their name and the projects they may see (None: every project)."""

    name: str
    projects: frozenset[str] | None

    @property
    def granted_anything(self) -> bool:
        return self.projects is None or bool(self.projects)


def viewer(config: DashboardConfig, name: str, provider_groups: Iterable[str] = ()) -> Viewer:
    """``name``'s grants: their own, their configured groups', and ``provider_groups``' (from SSO)."""
    user = config.users.get(name)
    grants: set[str] = set(user.projects) if user else set()
    for group in {*(user.groups if user else ()), *provider_groups}:
        grants.update(config.groups.get(group, ()))
    return Viewer(name=name, projects=None if EVERY_PROJECT in grants else frozenset(grants))


def hash_token(token: str) -> str:
    """The sha256 hex digest configured as ``token_sha256`` for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_viewer(config: DashboardConfig, token: str) -> Viewer | None:
    """The reader whose bearer token this is, or None.

    Every configured digest is compared, in constant time, so the time taken says nothing of
    which user (if any) came close.
    """
    if not token:
        return None
    digest = hash_token(token)
    found: str | None = None
    for name, user in config.users.items():
        if user.token_sha256 is not None and hmac.compare_digest(digest, user.token_sha256) and found is None:
            found = name
    return None if found is None else viewer(config, found)
