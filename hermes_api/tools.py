"""Responses ``tools``, ``tool_choice`` and ``parallel_tool_calls`` → their chat-completions twins.

Only function tools have a chat-completions equivalent: each becomes a chat tool
``{"type": "function", "function": {name, description, parameters, strict}}`` (the
fields the client set). Every other type, hosted (``web_search``, ``file_search``,
``code_interpreter``, ``image_generation``, ``computer_use_preview``, ``mcp``,
``local_shell`` …) or unknown, is dropped: not sent upstream, not a 400 (clients send
them by default), and not listed in the response's ``tools``, which holds exactly the
tools the provider was given. With no function tool left, no tool field goes upstream.

``tool_choice``: ``auto``/``none``/``required`` as they are; ``{"type": "function",
"name"}`` as ``{"type": "function", "function": {"name"}}``; ``allowed_tools`` as its
mode over only its function tools (the provider is given just those). A choice that
forces a tool the provider is not given (a hosted one, a name not in ``tools``,
``required`` with no function tool) is a 400 ``tool_choice``: the answer could never
be what was asked. Shapes: openai-python ``types/responses/function_tool_param.py``,
``tool_choice_function_param.py``, ``tool_choice_allowed_param.py``; OpenAI's chat
``ChatCompletionTool`` and ``ChatCompletionToolChoiceOption``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidValueError

Tool = dict[str, Any]
CHOICE_MODES = ("auto", "none", "required")
# OpenAI's rule for function names (its 400 says "string does not match pattern").
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
FUNCTION_FIELDS = ("description", "parameters", "strict")


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """The tool fields of one Responses request. ``tools``, ``tool_choice`` and
    ``parallel_tool_calls`` are the response object's echo of what was applied;
    ``upstream`` the chat-request fields that apply them (empty without function tools)."""

    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    upstream: dict[str, Any] = field(default_factory=dict)


NO_TOOLS = ToolSettings()


def _fail(message: str, param: str) -> InvalidValueError:
    return InvalidValueError(message, param=param)


def _function_tool(raw: dict[str, Any], where: str) -> Tool:
    """A function tool in the Responses shape, every field present (None when unset)."""
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fail(f"{where}.name must be 1 to 64 letters, digits, '_' or '-'.", f"{where}.name")
    for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise _fail(f"{where}.{key} must be {'an object' if kind is dict else 'a ' + kind.__name__}.", where)
    return {"type": "function", "name": name, **{key: raw.get(key) for key in FUNCTION_FIELDS}}


def function_tools(value: Any) -> list[Tool]:
    """The function tools of ``tools``, in order; other types are dropped. Raises
    ``InvalidValueError`` (``param`` ``tools``, ``tools[i]``, ``tools[i].name``) for a
    malformed list, entry or function tool."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail("'tools' must be an array of tool objects.", "tools")
    out = []
    for i, raw in enumerate(value):
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise _fail(f"tools[{i}] must be a tool object with a string 'type'.", f"tools[{i}]")
        if raw["type"] == "function":
            out.append(_function_tool(raw, f"tools[{i}]"))
    return out


def chat_tool(tool: Tool) -> dict[str, Any]:
    """One function tool as a chat-completions tool, with only the fields that were set."""
    function = {"name": tool["name"], **{k: tool[k] for k in FUNCTION_FIELDS if tool[k] is not None}}
    return {"type": "function", "function": function}


def _named(name: Any, tools: list[Tool], param: str) -> str:
    if not isinstance(name, str) or not any(tool["name"] == name for tool in tools):
        shown = str(name)[:64]
        raise _fail(f"Tool choice function {shown!r} is not one of the function tools in 'tools'.", param)
    return name


def _choice(value: Any, tools: list[Tool]) -> tuple[str | dict[str, Any], list[Tool], Any]:
    """(the echoed choice, the tools the provider is given, the chat ``tool_choice``)."""
    if value is None:
        return "auto", tools, None
    if value in CHOICE_MODES:
        if value == "required" and not tools:
            raise _fail("'tool_choice' is 'required' but 'tools' has no function tool.", "tool_choice")
        return value, tools, value
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "function":
        name = _named(value.get("name"), tools, "tool_choice")
        return {"type": "function", "name": name}, tools, {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode, listed = value.get("mode"), value.get("tools")
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise _fail("'tool_choice' of type allowed_tools needs 'mode' auto or required and a 'tools' array.",
                        "tool_choice")  # fmt: skip
        names = {t.get("name") for t in listed if isinstance(t, dict) and t.get("type") == "function"}
        allowed = [tool for tool in tools if tool["name"] in names]
        if mode == "required" and not allowed:
            raise _fail("'tool_choice' requires one of its allowed tools, and none is a function tool.", "tool_choice")
        names_echo = [{"type": "function", "name": tool["name"]} for tool in allowed]
        return {"type": "allowed_tools", "mode": mode, "tools": names_echo}, allowed, mode
    if isinstance(kind, str):
        raise _fail(f"'tool_choice' forces a {kind[:40]!r} tool, which hermes-api does not run: only function "
                    "tools reach the provider.", "tool_choice")  # fmt: skip
    raise _fail("'tool_choice' must be 'auto', 'none', 'required' or a tool choice object.", "tool_choice")


def tool_settings(body: dict[str, Any]) -> ToolSettings:
    """Read ``tools``, ``tool_choice`` and ``parallel_tool_calls`` from a Responses
    request body. Raises ``InvalidValueError`` naming the field."""
    tools_value, choice_value = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
    if tools_value is None and choice_value is None and parallel is None:
        return NO_TOOLS
    tools = function_tools(tools_value)
    echo_choice, given, chat_choice = _choice(choice_value, tools)
    upstream: dict[str, Any] = {}
    if given:
        upstream["tools"] = [chat_tool(tool) for tool in given]
        if chat_choice is not None:
            upstream["tool_choice"] = chat_choice
        if parallel is not None:
            upstream["parallel_tool_calls"] = parallel
    return ToolSettings(given, echo_choice, parallel is not False, upstream)
