"""Run by hermes-agent's own Python: what Hermes 0.19 makes of the home in $HERMES_HOME.

Prints one JSON object: the runtime provider (``hermes_cli/runtime_provider.py``
``resolve_runtime_provider``) and the identity and memory parts of the system prompt
(``agent/prompt_builder.py`` ``load_soul_md``, ``tools/memory_tool.py``
``MemoryStore.format_for_system_prompt``), joined as hermes-api joins them. With
``--add-memory TARGET TEXT`` it first writes an entry with Hermes's memory tool.
Not collected by pytest; ``make_samples.py`` runs it.
"""

import json
import os
import sys
from pathlib import Path

from hermes_cli.env_loader import load_hermes_dotenv

load_hermes_dotenv(hermes_home=Path(os.environ["HERMES_HOME"]))

from agent.prompt_builder import DEFAULT_AGENT_IDENTITY, load_soul_md  # noqa: E402
from hermes_cli.config import load_config  # noqa: E402
from hermes_cli.runtime_provider import resolve_runtime_provider  # noqa: E402
from tools.memory_tool import MemoryStore  # noqa: E402

args = sys.argv[1:]
memory_config = load_config().get("memory", {})
store = MemoryStore(memory_config.get("memory_char_limit", 2200), memory_config.get("user_char_limit", 1375))
if args[:1] == ["--add-memory"]:
    print(json.dumps(store.add(args[1], args[2])))
    sys.exit(0)
try:
    runtime = resolve_runtime_provider()
    runtime = {k: runtime.get(k) for k in ("provider", "base_url", "api_key", "model")}
except Exception as exc:  # what Hermes says when it cannot serve the home
    runtime = {"error": f"{type(exc).__name__}: {exc}"}
store.load_from_disk()
parts = [
    load_soul_md() or DEFAULT_AGENT_IDENTITY,
    store.format_for_system_prompt("memory") if memory_config.get("memory_enabled", True) else None,
    store.format_for_system_prompt("user") if memory_config.get("user_profile_enabled", True) else None,
]
print(json.dumps({"runtime": runtime, "persona": "\n\n".join(p for p in parts if p)}, ensure_ascii=False))
