"""The README is the front door: its commands and hook documentation must stay true."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from bench import hookspecs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*)\n```", README)
    assert len(commands) == 2, "README's quick start has the two set-up commands"
    main_job, tests = commands
    assert "bench run --suite mnist --plugins all" in main_job
    assert tests in ci.splitlines()


def test_every_hook_is_documented_under_its_exact_signature():
    hooks = [name for name in dir(hookspecs) if name.startswith("bench_")]
    assert hooks == ["bench_register_backends", "bench_register_suites"]
    for name in hooks:
        signature = str(inspect.signature(getattr(hookspecs, name))).replace("'", "")
        assert f"`{name}{signature}`" in README, f"{name}{signature} is not in README.md"
