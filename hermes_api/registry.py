"""ProfileRegistry: which profiles are served, and which one a request gets (DESIGN.md §3).

Profiles are loaded once at startup and kept with a signature of their files
(``profiles.signature``). Requests never touch the file system for that: a request only
notes that its profile was used. Every ``reload_interval`` seconds a background sweep
re-checks (six ``stat`` calls each, never a walk) the profiles used since its last tick
first, then the next ones round-robin, at most ``SWEEP_SLICE`` of each. So an edited
SOUL.md, a new profile or a fixed config.yaml is picked up without a restart, within a
tick for the profiles in use, and the cost of checking is bounded per second, not paid
per request, at any number of profiles. (An unknown name, with ``expose: "*"``, makes
the request look at the profile directory listing, at most once per interval.)
Everything here runs on the event loop: no locks, no awaits mid-update.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .errors import (
    InvalidValueError,
    ModelNotFoundError,
    PermissionDeniedError,
    ProfileConflictError,
)
from .headers import IDENTITY_HEADERS, ROUTING_HEADERS, header_value, identity_value, routing_headers
from .keys import Caller
from .profiles import (
    Profile,
    ProfileError,
    Signature,
    is_profile_name,
    list_profile_names,
    load_profile,
    profile_home,
    signature,
)
from .settings import Settings

logger = logging.getLogger("hermes_api")

SWEEP_SLICE = 256  # profiles re-checked per sweep tick


@dataclass(slots=True)
class _Entry:
    """The last load of one profile: the profile, or why it cannot be served."""

    profile: Profile | None
    error: str | None
    signature: Signature
    ready: bool = False  # the persona has been read (or the profile is not served)


@dataclass(frozen=True, slots=True)
class Selection:
    """What a request says about its profile, validated but not yet resolved.

    ``explicit``: (source, name) pairs from the ``/p/<profile>/`` prefix,
    ``X-Hermes-Profile`` and ``model``; ``route``: routing-header values by field.
    """

    explicit: tuple[tuple[str, str], ...] = ()
    route: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProfileStatus:
    """One row of ``hermes-api profiles``."""

    name: str
    exposed: bool
    profile: Profile | None
    reason: str | None


def _shown(name: str) -> str:
    """A requested name as it may appear in an error message: bounded, printable."""
    name = name if len(name) <= 80 else name[:80] + "…"
    return "".join(c if c.isprintable() else "?" for c in name)


class ProfileRegistry:
    """The served profiles, the keys' allowlists and the routes, resolved per request."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._environ = environ
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._listing_mtime: int | None = None
        self._listing_checked_at = float("-inf")
        self._models: tuple[Profile, ...] | None = None
        self._sweep_at = 0
        self._used: dict[str, None] = {}  # used since the last sweep tick, first use first
        # Most specific rule first, then file order (§3): sort once.
        self._routes = sorted(settings.routes, key=lambda r: -len(r.match))

    # -- loading --------------------------------------------------------------------

    def load(self) -> None:
        """Load every exposed profile now; log each one that cannot be served."""
        for name in self._candidate_names():
            self._entries[name] = self._load(name)
        self._models = None
        for name, entry in sorted(self._entries.items()):
            if entry.error:
                logger.warning("profile %s is not served: %s", name, entry.error)
            for warning in entry.profile.config_warnings if entry.profile else ():
                logger.warning("profile %s: %s", name, warning)
        served = [n for n, e in sorted(self._entries.items()) if e.profile]
        logger.info("serving %d profile(s): %s", len(served), ", ".join(served) or "none")

    def _candidate_names(self) -> list[str]:
        expose = self.settings.expose
        if expose is not None:
            return sorted(expose)
        self._listing_mtime = self._profiles_dir_mtime()
        self._listing_checked_at = self._clock()
        return list_profile_names(self.settings.hermes_home)

    def _profiles_dir_mtime(self) -> int | None:
        try:
            return os.stat(self.settings.hermes_home / "profiles").st_mtime_ns
        except OSError:
            return None

    def _load(self, name: str) -> _Entry:
        home = profile_home(self.settings.hermes_home, name)
        sig = signature(home)
        try:
            profile = load_profile(name, self.settings.hermes_home, self._environ, sig)
        except ProfileError as exc:
            return _Entry(None, str(exc), sig)
        return _Entry(profile, None, sig)

    def _check(self, name: str) -> None:
        """Re-read profile ``name`` if its files changed since it was loaded."""
        entry = self._entries.get(name)
        if entry is None or signature(profile_home(self.settings.hermes_home, name)) == entry.signature:
            return
        fresh = self._load(name)
        self._entries[name] = fresh
        self._models = None
        if fresh.error:
            logger.warning("profile %s changed and is not served: %s", name, fresh.error)
        else:
            logger.info("profile %s reloaded", name)
            for warning in fresh.profile.config_warnings if fresh.profile else ():
                logger.warning("profile %s: %s", name, warning)

    def _refresh_listing(self) -> None:
        """With ``expose: "*"``, pick up added and removed profile directories."""
        if self.settings.expose is not None:
            return
        now = self._clock()
        if now - self._listing_checked_at < self.settings.reload_interval:
            return
        self._listing_checked_at = now
        mtime = self._profiles_dir_mtime()
        if mtime == self._listing_mtime:
            return
        self._listing_mtime = mtime
        names = set(list_profile_names(self.settings.hermes_home))
        for gone in set(self._entries) - names:
            del self._entries[gone]
        for new in sorted(names - set(self._entries)):
            self._entries[new] = self._load(new)
        self._models = None

    def check_files(self) -> None:
        """One sweep tick: the profile listing (``expose: "*"``); the profiles used
        since the last tick, up to ``SWEEP_SLICE``, in order of first use (the rest wait
        for the next tick); then the next ``SWEEP_SLICE`` profiles round-robin. None is
        checked twice in a tick."""
        self._listing_checked_at = float("-inf")
        self._refresh_listing()
        checked = set(itertools.islice(self._used, SWEEP_SLICE))
        for name in checked:
            del self._used[name]
            self._check(name)
        names = list(self._entries)
        for i in range(min(SWEEP_SLICE, len(names))):
            name = names[(self._sweep_at + i) % len(names)]
            if name not in checked:
                self._check(name)
        self._sweep_at += SWEEP_SLICE

    async def sweep(self) -> None:
        """Forever: ``check_files()`` every ``reload_interval`` seconds."""
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            self.check_files()

    # -- lookup ---------------------------------------------------------------------

    def get(self, name: str) -> Profile | None:
        """The served profile ``name`` as last loaded (``check_files`` keeps it fresh);
        None if unknown, not exposed or not servable (the three look the same to
        callers). No file-system access unless ``name`` is unknown."""
        entry = self._entries.get(name)
        if entry is None:
            if not is_profile_name(name):
                return None
            self._refresh_listing()
            entry = self._entries.get(name)
            if entry is None:
                return None
        self._used[name] = None
        return (entry if entry.ready else self._with_persona(name, entry)).profile

    def _with_persona(self, name: str, entry: _Entry, *, log_notes: bool = True) -> _Entry:
        """``entry``, its persona read (``Profile.persona`` reads it on first use), and
        what the persona left out logged (unless ``log_notes`` is false: ``check`` prints
        it); a profile whose persona files cannot be read is not served, as at load time."""
        if entry.profile is None:
            return entry
        try:
            notes = entry.profile.persona_notes
        except ProfileError as exc:
            entry = _Entry(None, str(exc), entry.signature)
            if name in self._entries:
                self._entries[name] = entry
                self._models = None
            logger.warning("profile %s is not served: %s", name, exc)
        else:
            for note in notes if log_notes else ():
                logger.warning("profile %s: %s", name, note)
        entry.ready = True
        return entry

    def models(self) -> tuple[Profile, ...]:
        """Every served profile, sorted by name (cached until something changes)."""
        self._refresh_listing()
        if self._models is None:
            self._models = tuple(e.profile for _, e in sorted(self._entries.items()) if e.profile is not None)
        return self._models

    def survey(self) -> Iterator[ProfileStatus]:
        """Every profile found in the home and every exposed name, for ``profiles``."""
        expose = self.settings.expose
        names = set(list_profile_names(self.settings.hermes_home)) | set(expose or ())
        for name in sorted(names):
            exposed = expose is None or name in expose
            entry = self._with_persona(name, self._entries.get(name) or self._load(name), log_notes=False)
            reason = entry.error if entry.error else (None if exposed else "not in expose")
            yield ProfileStatus(name, exposed, entry.profile, reason)

    # -- resolution (§3) --------------------------------------------------------------

    def select(
        self,
        headers: Mapping[str, str],
        *,
        prefix: str | None = None,
        model: object = None,
        identity: bool = False,
    ) -> Selection:
        """Read a request's selectors. ``model`` is the body's (or path's) ``model``;
        empty values and ``model_aliases`` mean "no explicit profile". ``identity``: the
        caller's key has ``trusted_identity``, so the ``IDENTITY_HEADERS`` count too;
        otherwise they are not even read. Raises ``InvalidHeaderError`` and
        ``InvalidValueError`` (``model`` not a string)."""
        headers = routing_headers(headers, identity=identity)
        explicit = []
        if prefix is not None:
            explicit.append(("prefix", prefix))
        header = header_value(headers, "x-hermes-profile")
        if header:
            explicit.append(("header", header))
        if model is not None and not isinstance(model, str):
            raise InvalidValueError("'model' must be a string.", param="model")
        if model and model not in self.settings.model_aliases:
            explicit.append(("model", model))
        route = {}
        for field_name, header_name in ROUTING_HEADERS.items():
            value = header_value(headers, header_name)
            if value:
                route[field_name] = value
        if identity:
            for field_name, header_name in IDENTITY_HEADERS.items():
                value = identity_value(headers, header_name)
                if value:
                    route[field_name] = value
        return Selection(tuple(explicit), route)

    def resolve(self, selection: Selection, caller: Caller) -> Profile:
        """The profile a request runs under (§3): explicit selectors, which must agree
        (else 400 ``profile_conflict``); else the most specific matching route; else
        ``default_profile``. Unknown and not-exposed names raise the same 404
        ``ModelNotFoundError``; a profile the caller's key may not use raises 403."""
        names = {name for _, name in selection.explicit}
        if len(names) > 1:
            raise ProfileConflictError(
                "The request names more than one profile ("
                + ", ".join(f"{source} '{_shown(name)}'" for source, name in selection.explicit)
                + "); name one, or make them agree."
            )
        name = names.pop() if names else self._route(selection.route)
        if name is None:
            raise InvalidValueError(
                "No profile selected: set 'model' to a profile id from GET /v1/models.",
                param="model",
            )
        profile = self.get(name)
        if profile is None:
            raise ModelNotFoundError(f"The model `{_shown(name)}` does not exist or you do not have access to it.")
        if not caller.may_use(name):
            raise PermissionDeniedError(f"This API key may not use the model `{name}`.")
        return profile

    def _route(self, values: Mapping[str, str]) -> str | None:
        if values:
            for rule in self._routes:
                if all(values.get(k) == v for k, v in rule.match):
                    return rule.profile
        return self.settings.default_profile
