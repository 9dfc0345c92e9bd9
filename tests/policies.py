"""A security policy for the web tests: the user is the ``X-User`` header.

Used by the dashboard's tests and the metrics' (WebTest under an
application's own security policy).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from pyramid.security import Allowed, Denied


class HeaderPolicy:
    """``X-User: NAME`` is NAME; *grants* says which permissions each user
    has (by default ``admin`` has ``scheduler.admin``)."""

    def __init__(self, grants: Mapping[str, Set[str]] | None = None) -> None:
        self.grants = grants if grants is not None else {"admin": {"scheduler.admin"}}

    def identity(self, request: Any) -> str | None:
        return request.headers.get("X-User")

    def authenticated_userid(self, request: Any) -> str | None:
        return self.identity(request)

    def permits(self, request: Any, context: Any, permission: str) -> Any:
        user = self.identity(request)
        if user is not None and permission in self.grants.get(user, ()):
            return Allowed(f"{user} has {permission}")
        return Denied(f"{user or 'anonymous'} lacks {permission}")

    def remember(self, request: Any, userid: str, **kw: Any) -> list[Any]:
        return []

    def forget(self, request: Any, **kw: Any) -> list[Any]:
        return []
