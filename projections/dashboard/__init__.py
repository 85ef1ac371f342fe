"""The read-only status dashboard (FastAPI, server-rendered Jinja2, a little plain JavaScript)."""

from projections.dashboard.app import create_app

__all__ = ["create_app"]
