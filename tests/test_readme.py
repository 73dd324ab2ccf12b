"""The README is the front door: its commands and hook documentation must stay true."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from bench.core import hookspecs

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


def readme_bench_commands(text: str = README) -> list[str]:
    """Every `bench ...` command line in the README's bash code blocks (also after `&&`)."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] in ("bench", ".venv/bin/bench"):
                    commands.append(" ".join(words))
    return commands


def test_every_readme_command_parses_and_expands_with_the_builtin_plugins(tmp_path,
                                                                          monkeypatch):
    """Each README command goes through the argument parser and, for `run` and `memory`, the
    name, seed and option checks and the cell expansion (nothing is run or written). The
    README's run file (the toml block that starts with ``# grid.toml``) is the one its
    ``--config grid.toml`` reads."""
    import shlex

    blocks = re.findall(r"```toml\n(# (\S+)\n.*?)```", README, flags=re.S)
    assert blocks, "the README shows a run file"
    for text, name in blocks:
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)

    from bench.cli import main as cli
    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(builtins=True, entry_points=False))
    parser = cli.build_parser()
    commands = readme_bench_commands()
    assert len(commands) >= 14
    seen = set()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        seen.add(args.command)
        if args.command == "run":
            assert cli.run_request(args, registry, check=False).cells, command
        elif args.command == "memory":
            assert cli.memory_request(args, registry, check=False).cells, command
        elif args.command == "gradients":
            from bench.studies.gradient_study import study_request

            assert study_request(registry, suites=args.suite, backends=args.backends,
                                 tolerances=args.tolerances, scales=args.scales,
                                 options=dict(args.options)).cells, command
    assert {"list", "run", "report", "publish", "memory", "gradients"} <= seen


def test_readme_commands_are_found_in_code_blocks():
    text = "x\n```bash\nsource .venv/bin/activate\nbench list   # all\n" \
           "a && .venv/bin/bench run --suite mnist\n```\n`bench inline`\n"
    assert readme_bench_commands(text) == ["bench list", ".venv/bin/bench run --suite mnist"]


def test_readme_development_tools_come_with_the_quick_start_install():
    """Every tool the Development section calls from .venv/bin is installed by the extras of the
    quick start's `pip install -e '.[all,test]'`."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    installed = {re.split(r"[<>=\[]", dep)[0] for name in ("all", "test") for dep in extras[name]}
    installed |= {"python", "bench"}
    development = README.split("## Development", 1)[1]
    tools = set(re.findall(r"^\.venv/bin/(\S+)", development, flags=re.M))
    assert "tox" in tools
    assert tools <= installed, tools - installed
    assert "\ntox -e" not in README
