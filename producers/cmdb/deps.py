"""FastAPI dependencies of the CMDB's routes, as ``Annotated`` aliases in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from domain.config import HotupdateConfig
from producers.cmdb.database import CmdbDatabase
from producers.cmdb.guard import MISSING_TOKEN_DETAIL, OPERATOR_STATE_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CmdbContext:
    """What the routes use, built once by ``create_app`` and kept on ``app.state.cmdb``."""

    config: HotupdateConfig
    database: CmdbDatabase


def get_context(request: Request) -> CmdbContext:
    context: CmdbContext = request.app.state.cmdb
    return context


def get_config(context: Annotated[CmdbContext, Depends(get_context)]) -> HotupdateConfig:
    return context.config


def get_database(context: Annotated[CmdbContext, Depends(get_context)]) -> CmdbDatabase:
    return context.database


_bearer = HTTPBearer(auto_error=False, description="an operator's token (hotupdate cmdb hash-token)")


def get_operator(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The operator the request guard (guard.py) found for the bearer token before the body was read;
    401 if there is none. ``_bearer`` only declares the scheme in the OpenAPI document."""
    name = getattr(request.state, OPERATOR_STATE_KEY, None)
    if not isinstance(name, str):
        log.warning("refused a request without a valid operator token")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=MISSING_TOKEN_DETAIL,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


ConfigDep = Annotated[HotupdateConfig, Depends(get_config)]
DatabaseDep = Annotated[CmdbDatabase, Depends(get_database)]
OperatorDep = Annotated[str, Depends(get_operator)]
