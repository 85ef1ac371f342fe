"""What every configuration model shares: frozen, no unknown keys; and the error that names the problem."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class ConfigError(ValueError):
    """The configuration is wrong; the message names the file, the key and the problem."""


class ConfigModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
