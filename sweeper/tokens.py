"""What a token must be: the server checks its own at start, clients theirs before a call."""

from __future__ import annotations


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a token, or None: it goes in an HTTP header, so printable ASCII
    without spaces, and not blank (a token file saved with Windows line ends ends in a ``\\r``)."""
    if not token.strip():
        return "the token is blank: give a token of printable characters, such as `openssl rand -hex 32`"
    if not all(" " < c <= "~" for c in token):
        return (
            "the token holds characters an HTTP header cannot carry (spaces, control characters such "
            "as a line end, or non-ASCII): use printable ASCII, such as `openssl rand -hex 32`"
        )
    return None
