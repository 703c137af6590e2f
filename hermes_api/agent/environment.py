"""What an agent worker starts with: its environment and its working directory.

The environment is built from an allowlist, never copied from hermes-api's own: the
worker must not see hermes-api's keys (``API_SERVER_KEY``, ``keys[].key_env``) nor
another profile's, and Hermes reads more of its environment than one would guess
(hermes-agent 0.19: ``CUSTOM_BASE_URL`` replaces a custom endpoint's URL,
``HERMES_MAX_ITERATIONS`` the iteration limit, ``TERMINAL_CWD`` the working directory,
``HASS_TOKEN`` or ``HERMES_KANBAN_TASK`` add tools). What it gets:

- the basics a process needs: ``PATH``, ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``,
  ``TMPDIR``;
- ``HERMES_HOME`` = the profile's home: Hermes then loads the profile's own ``.env``,
  ``config.yaml``, ``SOUL.md``, memories and ``state.db``, and nothing else's;
- ``HOME`` = ``working_directory(profile)``: where Hermes's API server starts the
  terminal, file and code tools when the profile's ``config.yaml`` names no
  ``terminal.cwd`` (``gateway/run.py``: ``TERMINAL_CWD``, else ``MESSAGING_CWD``, else
  the home directory; the first two it reports as deprecated settings);
- the variable the profile's provider key comes from (``Profile.key_var``) when
  hermes-api's environment has it (the rule of the direct runtime: the profile's
  ``.env`` first, which Hermes loads over it, then the process environment), and the
  variables ``agent.env`` names.

A worker either starts with that environment (``execve``), or is a spare bound to the
profile (``agent/spare.py``): started with ``spare_environment`` (the basics alone:
nothing of hermes-api's secrets, of ``agent.env`` or of any profile), it is then sent
the profile's environment, which replaces its ``os.environ`` before Hermes is imported.
Either way Hermes, the profile's tools and their subprocesses see exactly the
environment above (and the ``.env`` Hermes loads into it); a bound spare's
``/proc/<pid>/environ`` still shows the basics it was started with, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..profiles import Profile
from ..settings import AgentRuntime

BASICS = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")
WORKSPACE = "workspace"


def working_directory(profile: Profile) -> Path:
    """``<profile home>/workspace``: the worker's home and working directory, where the
    profile's terminal, file and code tools start unless its ``config.yaml`` names a
    ``terminal.cwd`` (Hermes applies that in the worker). Hermes's own API server would
    use the user's home directory, the same one for every profile."""
    return profile.home / WORKSPACE


def spare_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a spare starts with: ``BASICS`` and ``LC_*`` of ``environ``
    (hermes-api's), what every worker gets whatever its profile (module docstring)."""
    env = {name: environ[name] for name in BASICS if name in environ}
    env.update((name, value) for name, value in environ.items() if name.startswith("LC_"))
    return env


def worker_environment(profile: Profile, runtime: AgentRuntime, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``profile``'s worker (module docstring): ``spare_environment``
    and the profile's own part."""
    env = spare_environment(environ)
    for name in (*([profile.key_var] if profile.key_var else []), *runtime.env):
        if name in environ:
            env[name] = environ[name]
    env["HERMES_HOME"] = os.fspath(profile.home)
    env["HOME"] = os.fspath(working_directory(profile))
    return env
