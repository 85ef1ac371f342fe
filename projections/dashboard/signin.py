"""Signing in to the dashboard: bearer tokens, browser sessions, and single sign-on by OpenID Connect.

Every page, JSON route and the live stream (``/api/stream``, server-sent events) depends on
:func:`current_viewer`. It accepts, in this order:

- ``Authorization: Bearer <token>`` whose sha256 is a ``dashboard.users.<name>.token_sha256``
  (scripts, the JSON API, stream clients);
- a session cookie set when the browser signed in through the company's OpenID Connect provider
  (authorization-code flow with PKCE, by Authlib): signed, HttpOnly, SameSite=Lax (the provider's
  redirect back is a top-level GET from another site, which Strict would strip), Secure unless
  turned off for a plain-HTTP test, and ending ``session_hours`` after sign-in whatever happens.

Anything else is refused: 401 for ``/api/*``, a redirect to sign-in for pages. Sign-in keeps the
dashboard read-only: every route here is a GET, and none changes what the dashboard shows.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware
from starlette.templating import Jinja2Templates

from domain.config import DashboardConfig, OidcConfig
from projections.dashboard.access import Viewer, token_viewer, viewer

log = logging.getLogger(__name__)

SESSION_COOKIE = "hotupdate_dashboard"
_SESSION_KEY = "viewer"
_NEXT_KEY = "next"


class SignInRequired(Exception):
    """No valid token or session came with a request that needs one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def current_viewer(request: Request) -> Viewer:
    """The reader making ``request``, from its bearer token or its session; else :class:`SignInRequired`."""
    config: DashboardConfig = request.app.state.access
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found = token_viewer(config, token.strip())
        if found is None:
            raise SignInRequired("the bearer token is not one of dashboard.users")
        return found
    signed_in = request.session.get(_SESSION_KEY)
    if isinstance(signed_in, dict) and float(signed_in.get("until", 0)) > time.time():
        return viewer(config, str(signed_in["name"]), [str(g) for g in signed_in.get("groups", [])])
    raise SignInRequired("sign in first" if not signed_in else "the session has ended: sign in again")


Reader = Annotated[Viewer, Depends(current_viewer)]


def install(app: FastAPI, config: DashboardConfig, templates: Jinja2Templates, *, session_secret: bytes,
            secure_cookies: bool = True) -> None:
    """Add sessions, the refusal of unauthenticated requests, and the sign-in routes to ``app``."""
    app.state.access = config
    app.add_middleware(SessionMiddleware, secret_key=session_secret.hex(), session_cookie=SESSION_COOKIE,
                       max_age=int(config.session_hours * 3600), same_site="lax", https_only=secure_cookies)
    sso = _oidc_client(config.oidc) if config.oidc else None

    def signin_page(request: Request, status: int, message: str) -> HTMLResponse:
        return templates.TemplateResponse(request, "signin.html", {"message": message, "sso": sso is not None},
                                          status_code=status)

    async def refuse(request: Request, exc: Exception) -> Response:
        reason = exc.reason if isinstance(exc, SignInRequired) else "sign in first"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": reason}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if sso is not None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{request.app.url_path_for('sign_in')}?{urlencode({'next': target})}", 303)
        return signin_page(request, 401, f"{reason}: this dashboard has no single sign-on configured; "
                                         "use an API token (Authorization: Bearer).")

    app.add_exception_handler(SignInRequired, refuse)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False, name="sign_in")
    async def sign_in(request: Request, next: str = "/") -> Response:
        if sso is None or config.oidc is None:
            return signin_page(request, 404, "This dashboard has no single sign-on configured.")
        request.session[_NEXT_KEY] = local_path(next)
        redirect_uri = config.oidc.redirect_uri or str(request.url_for("auth_callback"))
        try:
            response: Response = await sso.authorize_redirect(request, redirect_uri)
        except httpx.HTTPError as exc:
            log.warning("dashboard: the identity provider did not answer: %s", exc)
            return signin_page(request, 502, "The identity provider did not answer; try again later.")
        return response

    @app.get("/auth/callback", response_class=HTMLResponse, include_in_schema=False, name="auth_callback")
    async def auth_callback(request: Request) -> Response:
        if sso is None or config.oidc is None:
            return signin_page(request, 404, "This dashboard has no single sign-on configured.")
        try:
            claims = await _signed_in_claims(sso, request)
        except (OAuthError, httpx.HTTPError, ValueError) as exc:
            log.warning("dashboard: sign-in refused: %s", exc)
            return signin_page(request, 401, "Sign-in failed; try again.")
        name = str(claims.get(config.oidc.username_claim) or claims["sub"])
        raw_groups = claims.get(config.oidc.groups_claim) or []
        groups = [str(g) for g in raw_groups] if isinstance(raw_groups, list) else [str(raw_groups)]
        reader = viewer(config, name, groups)
        target = local_path(str(request.session.get(_NEXT_KEY, "/")))
        request.session.clear()
        if not reader.granted_anything:
            log.info("dashboard: %s signed in but is granted no project (groups %s)", name, groups)
            return signin_page(request, 403, f"Signed in as {name}, who is granted no project here.")
        request.session[_SESSION_KEY] = {"name": name, "groups": groups,
                                         "until": time.time() + config.session_hours * 3600}
        log.info("dashboard: %s signed in (groups %s)", name, groups)
        return RedirectResponse(target, 303)

    @app.get("/logout", response_class=HTMLResponse, include_in_schema=False, name="sign_out")
    def sign_out(request: Request) -> HTMLResponse:
        request.session.clear()
        return signin_page(request, 200, "Signed out.")


def _oidc_client(oidc: OidcConfig) -> StarletteOAuth2App:
    secret = oidc.client_secret_file.read_text(encoding="utf-8").strip() if oidc.client_secret_file else None
    client_kwargs: dict[str, Any] = {"scope": " ".join(oidc.scopes), "code_challenge_method": "S256"}
    if secret is None:
        # a public client: PKCE alone binds the code to this browser's sign-in
        client_kwargs["token_endpoint_auth_method"] = "none"  # noqa: S105 (a method's name, not a password)
    oauth = OAuth()
    client: StarletteOAuth2App = oauth.register(
        "sso", client_id=oidc.client_id, client_secret=secret,
        server_metadata_url=oidc.issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs=client_kwargs,
    )
    return client


async def _signed_in_claims(sso: StarletteOAuth2App, request: Request) -> dict[str, Any]:
    """The claims of the user the provider sent back: the ID token's (Authlib checks its signature,
    issuer, audience, expiry and nonce), completed from the userinfo endpoint, where providers
    following the standard put the claims of the requested scopes (groups among them)."""
    token = await sso.authorize_access_token(request)
    claims = dict(token.get("userinfo") or {})
    if "sub" not in claims:
        raise ValueError("the provider sent no ID token")
    metadata = await sso.load_server_metadata()
    if metadata.get("userinfo_endpoint"):
        info = dict(await sso.userinfo(token=token))
        if info.get("sub") != claims["sub"]:
            raise ValueError("userinfo is about another subject than the ID token")
        claims = {**info, **claims}
    return claims


def local_path(target: str) -> str:
    """``target`` if it is a path on this dashboard, else ``/`` (no redirect to another site after sign-in).

    Browsers read ``\\`` as ``/`` and drop tabs and newlines, so ``/\\evil`` or ``/<tab>/evil`` would
    be ``//evil``, another site: any of them, or any other control character or space, gives ``/``."""
    if target.startswith("/") and not target.startswith("//") and not any(c <= " " or c == "\\" for c in target):
        return target
    return "/"
