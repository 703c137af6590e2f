"""The README's promises: its two commands come first, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from hermes_api import errors

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def first_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_run_and_test_commands() -> None:
    run, test = first_commands()
    assert "hermes-api demo" in run and "pytest" in test
    assert README.index("```sh") < README.index("## ")


def test_ci_runs_the_readme_test_command() -> None:
    _, test = first_commands()
    assert test in (ROOT / ".ci" / "run").read_text()


def test_error_table_lists_every_error_code() -> None:
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.HermesAPIError) and cls.code
    }
    table = README.split("## Errors", 1)[1].split("\n## ", 1)[0]
    missing = {code for code in codes if code not in table}
    assert missing == set(), missing
