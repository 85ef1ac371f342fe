"""Domain errors of the CMDB; the HTTP layer maps each class to one status code."""

from __future__ import annotations


class CmdbError(Exception):
    """Base of every error an operator's request can cause; the message is shown to the operator."""


class NotFound(CmdbError):
    """No hot update has this id."""


class UnknownProject(CmdbError):
    """The project is not in the configuration."""


class UnknownArea(CmdbError):
    """The area (display name or code) is not configured for the project and update type."""


class AmbiguousArea(CmdbError):
    """An area display name maps to several codes and the request did not choose one."""


class InvalidChoice(CmdbError):
    """A choice in the request does not fit the update (a file not pulled, a server not in the inventory)."""


class BadState(CmdbError):
    """The update is not in a state that allows the action (push before the pull finished)."""


class NotConfigured(CmdbError):
    """The configuration lacks something the action needs (no rsync target for the area)."""


class NotAllowed(InvalidChoice):
    """A value the project's configuration does not allow (domain/allowed.py); the message names the field."""
