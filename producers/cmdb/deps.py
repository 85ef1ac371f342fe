"""FastAPI dependencies of the CMDB's routes, as ``Annotated`` aliases in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from domain.config import HotupdateConfig
from producers.cmdb.auth import operator_for
from producers.cmdb.database import CmdbDatabase

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
    config: Annotated[HotupdateConfig, Depends(get_config)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The operator named by the bearer token; 401 for a missing or unknown token."""
    name = operator_for(credentials.credentials, config.cmdb.operators) if credentials is not None else None
    if name is None:
        log.warning("refused a request without a valid operator token")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid operator token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


ConfigDep = Annotated[HotupdateConfig, Depends(get_config)]
DatabaseDep = Annotated[CmdbDatabase, Depends(get_database)]
OperatorDep = Annotated[str, Depends(get_operator)]
