"""ProfileRegistry: which profiles are served, and which one a request gets (docs/contract.md §3).

Profiles are loaded once at startup and kept with a signature of their files
(``profiles.signature``). Requests never touch the file system for that: a request only
notes that its profile was used. Every ``reload_interval`` seconds a background sweep
re-checks (six ``stat`` calls each, never a walk) the profiles used since its last tick
first, then the next ones round-robin, at most ``SWEEP_SLICE`` of each, and with
``expose: "*"`` the profile directory listing. So an edited SOUL.md, a new profile or a
fixed config.yaml is picked up without a restart, within a tick for the profiles in use,
and the cost of checking is bounded per second, not paid per request, at any number of
profiles.

No file is read on the event loop, which serves every request: a tick's file I/O runs in
a worker thread (``_examine``), and so does a profile's first persona read (``ready``;
SOUL.md and the memories are read on first use, not at load). The registry's state
changes only on the event loop, from what those threads return: no locks, and no
awaits in the middle of an update.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .context import run_sync
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


def _not_found(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"The model `{_shown(name)}` does not exist or you do not have access to it.")


def _persona_failure(profile: Profile) -> str | None:
    """Read ``profile``'s persona (kept on the profile); why it cannot be, or None."""
    try:
        profile.persona  # noqa: B018
    except ProfileError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class _Tick:
    """One sweep tick's work, planned on the event loop: (name, entry now) of each
    profile to re-check; with ``expose: "*"`` the listing as last seen, (profiles
    directory mtime, names known), else None."""

    checks: tuple[tuple[str, _Entry], ...]
    listing: tuple[int | None, frozenset[str]] | None


@dataclass(slots=True)
class _Findings:
    """What a tick found on disk: (name, entry checked, fresh entry) of each changed
    profile; when it looked at the listing, (its mtime, the names gone from it, the
    entries of new ones)."""

    changed: list[tuple[str, _Entry, _Entry]] = field(default_factory=list)
    listing: tuple[int | None, frozenset[str], dict[str, _Entry]] | None = None


class ProfileRegistry:
    """The served profiles, the keys' allowlists and the routes, resolved per request."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self._environ = environ
        self._entries: dict[str, _Entry] = {}
        self._listing_mtime: int | None = None
        self._models: tuple[Profile, ...] | None = None
        self._sweep_at = 0
        self._used: dict[str, None] = {}  # used since the last sweep tick, first use first
        # Most specific rule first, then file order (§3): sort once.
        self._routes = sorted(settings.routes, key=lambda r: -len(r.match))
        # The identity headers some route matches on: the only ones ever read.
        self._identity_read = {
            header: field_name
            for field_name, header in IDENTITY_HEADERS.items()
            if any(field_name == f for rule in settings.routes for f, _ in rule.match)
        }

    # -- loading: file I/O, run in worker threads --------------------------------------

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
            profile = load_profile(
                name,
                self.settings.hermes_home,
                self._environ,
                sig,
                runtime="agent" if self.settings.agent.serves(name) else "direct",
            )
        except ProfileError as exc:
            return _Entry(None, str(exc), sig)
        return _Entry(profile, None, sig)

    def check_files(self) -> None:
        """One sweep tick, in this thread: the profile listing (``expose: "*"``); the
        profiles used since the last tick, up to ``SWEEP_SLICE``, in order of first use
        (the rest wait for the next tick); then the next ``SWEEP_SLICE`` profiles
        round-robin. None is checked twice in a tick."""
        self._apply(self._examine(self._plan()))

    async def sweep(self) -> None:
        """Forever: a ``check_files()`` tick every ``reload_interval`` seconds, its file
        I/O in a worker thread (``_examine``); only planning and applying the results,
        which touch no file, run on the event loop."""
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            tick = self._plan()
            self._apply(await run_sync(self._examine, tick))

    def _plan(self) -> _Tick:
        """What the next tick looks at (no file I/O): the used profiles first, then the
        round-robin slice, each with its entry as it is now, and the listing as last seen."""
        checked = dict.fromkeys(itertools.islice(self._used, SWEEP_SLICE))
        for name in checked:
            del self._used[name]
        names = list(self._entries)
        for i in range(min(SWEEP_SLICE, len(names))):
            checked.setdefault(names[(self._sweep_at + i) % len(names)])
        self._sweep_at += SWEEP_SLICE
        listing = None if self.settings.expose is not None else (self._listing_mtime, frozenset(self._entries))
        return _Tick(tuple((name, self._entries[name]) for name in checked if name in self._entries), listing)

    def _examine(self, tick: _Tick) -> _Findings:
        """The file I/O of a tick (a worker thread may run it: it changes nothing here):
        the listing, each checked profile's signature, and loads of those changed or new."""
        found = _Findings()
        for name, entry in tick.checks:
            if signature(profile_home(self.settings.hermes_home, name)) != entry.signature:
                found.changed.append((name, entry, self._load(name)))
        if tick.listing is not None:
            seen_mtime, known = tick.listing
            mtime = self._profiles_dir_mtime()
            if mtime != seen_mtime:
                names = frozenset(list_profile_names(self.settings.hermes_home))
                found.listing = (mtime, known - names, {new: self._load(new) for new in sorted(names - known)})
        return found

    def _apply(self, found: _Findings) -> None:
        """Take in what ``_examine`` found (on the event loop, no awaits). An entry
        replaced meanwhile keeps its newer version."""
        if found.listing is not None:
            self._listing_mtime, gone, added = found.listing
            for name in gone:
                self._entries.pop(name, None)
            for name, entry in added.items():
                self._entries.setdefault(name, entry)
            self._models = None
        for name, old, fresh in found.changed:
            if self._entries.get(name) is not old:
                continue
            self._entries[name] = fresh
            if fresh.error:
                logger.warning("profile %s changed and is not served: %s", name, fresh.error)
            else:
                logger.info("profile %s reloaded", name)
                for warning in fresh.profile.config_warnings if fresh.profile else ():
                    logger.warning("profile %s: %s", name, warning)
        if found.changed:
            self._models = None

    # -- lookup ---------------------------------------------------------------------

    def get(self, name: str) -> Profile | None:
        """The served profile ``name`` as last loaded (the sweep keeps it fresh), its
        persona read in this thread if it was not yet; None if unknown, not exposed or
        not servable (the three look the same to callers). For the CLI and tests;
        requests use ``resolve`` and ``ready``."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        self._used[name] = None
        return (entry if entry.ready else self._with_persona(name, entry)).profile

    async def ready(self, profile: Profile) -> Profile:
        """``profile`` (from ``resolve``) with its persona read: the first time, in a
        worker thread, as SOUL.md and the memories may sit on a slow disk. Raises
        ``ModelNotFoundError`` when they cannot be read; the profile is then not served
        (as at load time) until its files change."""
        entry = self._entries.get(profile.name)
        if entry is not None and entry.ready and entry.profile is profile:
            return profile
        failure = await run_sync(_persona_failure, profile)
        entry = self._entries.get(profile.name)
        if entry is not None and entry.profile is profile:
            self._settle(profile.name, entry, failure)
        if failure is not None:
            raise _not_found(profile.name)
        return profile

    def _with_persona(self, name: str, entry: _Entry, *, log_notes: bool = True) -> _Entry:
        """``entry``, its persona read in this thread (``Profile.persona`` reads it on
        first use); a profile whose persona files cannot be read is not served."""
        if entry.profile is None:
            return entry
        return self._settle(name, entry, _persona_failure(entry.profile), log_notes=log_notes)

    def _settle(self, name: str, entry: _Entry, failure: str | None, *, log_notes: bool = True) -> _Entry:
        """Record that ``entry``'s persona was read, or could not be (``failure``), and
        log what the persona left out (unless ``log_notes`` is false: ``check`` prints it)."""
        if failure is not None:
            entry = _Entry(None, failure, entry.signature)
            if name in self._entries:
                self._entries[name] = entry
                self._models = None
            logger.warning("profile %s is not served: %s", name, failure)
        elif log_notes and entry.profile is not None:
            for note in entry.profile.persona_notes:
                logger.warning("profile %s: %s", name, note)
        entry.ready = True
        return entry

    def models(self) -> tuple[Profile, ...]:
        """Every served profile, sorted by name (cached until something changes)."""
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
        caller's key has ``trusted_identity``, so the ``IDENTITY_HEADERS`` count too, but
        only those a route could use: none when the request names its profile, and only
        the fields some route matches on. The others are not read at all, so a client's
        unexpanded ``{{...}}`` template there is no error (LibreChat's agents send them).
        Raises ``InvalidHeaderError`` and ``InvalidValueError`` (``model`` not a string)."""
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
        if identity and not explicit:
            for header_name, field_name in self._identity_read.items():
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
        entry = self._entries.get(name)
        if entry is None or entry.profile is None:
            raise _not_found(name)
        self._used[name] = None
        if not caller.may_use(name):
            raise PermissionDeniedError(f"This API key may not use the model `{name}`.")
        return entry.profile

    def _route(self, values: Mapping[str, str]) -> str | None:
        if values:
            for rule in self._routes:
                if all(values.get(k) == v for k, v in rule.match):
                    return rule.profile
        return self.settings.default_profile
