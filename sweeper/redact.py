"""Secrets out of URLs before they reach a message or a log: a URL's password (or its whole user
part, which may be a token) and secrets in its query string. Standard library only, for agents."""

from __future__ import annotations

import re

# A URL's user part, up to its last @ before the host (a password may hold an @).
_USERINFO = re.compile(r"://([^/\s]*)@")
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|token|secret|api_key|key)=)[^&\s]*", re.IGNORECASE)


def redact_urls(text: str, *, keep_user: bool = True) -> str:
    """``text`` with every URL's password, and query values named like secrets, as ``***``.

    ``keep_user=False`` hides the whole user part (``https://TOKEN@host`` puts a token there)."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match.group(1).partition(":")
        if keep_user and not colon:
            return match.group(0)
        return f"://{user}:***@" if keep_user else "://***@"

    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(userinfo, text))
