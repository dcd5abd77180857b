"""Principals (who calls: a name and a role), the tokens that name them, and their quotas.

A token names a principal in the tokens file or `$BPTRAIN_TOKENS`. Jobs and uploaded
datasets belong to the principal that made them; a user sees only its own, an admin
sees and controls everything. With no tokens configured the one caller is `LOCAL`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
NAMED_ENTRY = re.compile(r"^([A-Za-z0-9._-]{1,64}):(user|admin):(.+)$")
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256
BARE_TOKEN_NAME = "admin"  # the principal a bare token (the format before principals) names


@dataclass(frozen=True)
class Principal:
    """Who makes a call: `name` owns what it creates; an admin sees everyone's."""

    name: str
    is_admin: bool

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError("a principal's name must be 1-64 characters of A-Z a-z 0-9 . _ -")

    def can_see(self, owner: str) -> bool:
        """Whether what `owner` made is visible (and controllable) to this principal."""
        return self.is_admin or owner == self.name


# The single user of a server without tokens; it also owns what was stored before owners.
LOCAL = Principal("local", is_admin=True)


def parse_principals(text: str) -> dict[str, Principal]:
    """Token -> principal, from a tokens file's lines or `$BPTRAIN_TOKENS`' commas.

    An entry is ``NAME:ROLE:TOKEN`` (ROLE user or admin), or a bare ``TOKEN``, which
    names the admin principal "admin" (so files written before principals keep their
    meaning). A bare token may not contain ':', so a mistyped named entry is an error,
    never an admin. The name "local" is reserved (LOCAL owns what was stored before
    owners, which only admins should see). Tokens are 16 to 256 characters; blank lines
    and lines starting with '#' are ignored. Raises ValueError (never quoting a token)
    for a bad entry, a token given to two principals, or a name given both roles.
    """
    principals: dict[str, Principal] = {}
    roles: dict[str, bool] = {}
    entries = [
        entry.strip()
        for line in text.splitlines()
        if not line.strip().startswith("#")
        for entry in line.split(",")
    ]
    for number, entry in enumerate((e for e in entries if e), start=1):
        token, principal = _parse_entry(number, entry)
        if principals.setdefault(token, principal) != principal:
            raise ValueError(f"tokens entry {number}: the same token names two principals")
        if roles.setdefault(principal.name, principal.is_admin) != principal.is_admin:
            raise ValueError(
                f"tokens entry {number}: principal {principal.name} is given both roles"
            )
    return principals


def _parse_entry(number: int, entry: str) -> tuple[str, Principal]:
    if ":" in entry:
        match = NAMED_ENTRY.match(entry)
        if match is None:
            raise ValueError(
                f"tokens entry {number}: must be NAME:ROLE:TOKEN (NAME 1-64 characters of "
                "A-Z a-z 0-9 . _ -, ROLE user or admin) or a bare token without ':'"
            )
        name, role, token = match.groups()
        if name == LOCAL.name:
            raise ValueError(
                f"tokens entry {number}: the name {LOCAL.name} is reserved for the single "
                "user of a server without tokens"
            )
        principal = Principal(name, is_admin=role == "admin")
    else:
        token, principal = entry, Principal(BARE_TOKEN_NAME, is_admin=True)
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(
            f"tokens entry {number}: a token must be {MIN_TOKEN_CHARS} to "
            f"{MAX_TOKEN_CHARS} characters long"
        )
    return token, principal


@dataclass(frozen=True, kw_only=True)
class Quotas:
    """What each principal may hold at once; None is unlimited.

    `running_jobs`: its jobs running at once (the rest wait QUEUED, and other
    principals' jobs behind them may start); `queued_jobs`: its jobs waiting to start
    (a submission beyond is refused); `dataset_bytes`: the bytes of its uploaded
    datasets, each counted in full even where another principal stored the same bytes.

    Admins are held to them too: a bare-token deployment is one admin principal,
    "admin", whose quotas then bound everyone who calls, and an operator who wants an
    admin unbounded leaves the quota unset (the global JobsConfig limits still hold).
    """

    running_jobs: int | None = None
    queued_jobs: int | None = None
    dataset_bytes: int | None = None

    def __post_init__(self) -> None:
        for name, least in (("running_jobs", 1), ("queued_jobs", 1), ("dataset_bytes", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"quota {name} must be >= {least} or unset, got {value}")
