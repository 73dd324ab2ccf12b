"""The README is the front door and docs/ the manual: their commands, links and hook
documentation must stay true."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest

from bench.core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
#: The manual's pages (docs/plugins.md included when it exists), each with the README first.
PAGES = {"README.md": README, **{f"docs/{p.name}": p.read_text()
                                 for p in sorted(DOCS.glob("*.md"))}}


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*)\n```", README)
    assert len(commands) == 2, "README's quick start has the two set-up commands"
    main_job, tests = commands
    assert "bench run --suite mnist --plugins all" in main_job
    assert tests in ci.splitlines()


def test_ci_builds_the_manual_after_the_fast_tests():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    build = [i for i, line in enumerate(lines) if "mkdocs build --strict" in line]
    fast = [i for i, line in enumerate(lines)
            if line.endswith(".venv/bin/python -m pytest -n auto")]
    assert build and fast and fast[0] < build[0]


def test_the_quickstart_page_shows_the_readme_commands():
    """docs/quickstart.md repeats the two set-up commands word for word."""
    commands = re.findall(r"```bash\n(python3 -m venv .*)\n```", README)
    quickstart = PAGES["docs/quickstart.md"]
    for command in commands:
        assert f"```bash\n{command}\n```" in quickstart


def test_every_hook_is_documented_under_its_exact_signature():
    reference = PAGES["docs/hooks.md"]
    hooks = [name for name in dir(hookspecs) if name.startswith("bench_")]
    assert hooks == ["bench_register_backends", "bench_register_claims", "bench_register_suites"]
    for name in hooks:
        signature = str(inspect.signature(getattr(hookspecs, name))).replace("'", "")
        assert f"`{name}{signature}`" in reference, f"{name}{signature} is not in docs/hooks.md"


def readme_bench_commands(text: str = README) -> list[str]:
    """Every `bench ...` command line in a page's bash code blocks (also after `&&`)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] in ("bench", ".venv/bin/bench"):
                    commands.append(" ".join(words))
    return commands


def documented_bench_commands() -> dict[str, list[str]]:
    """Page -> its `bench ...` commands, for README.md and every docs/*.md page."""
    return {page: readme_bench_commands(text) for page, text in PAGES.items()}


def test_every_documented_command_parses_and_expands_with_the_builtin_plugins(tmp_path,
                                                                              monkeypatch):
    """Each command of README.md and docs/*.md goes through the argument parser and, for `run`,
    `memory` and `gradients`, the name, seed and option checks and the cell expansion (nothing is
    run or written). A page's run file (a toml block that starts with ``# grid.toml``) is the
    one its ``--config grid.toml`` reads. The commands that run on a GPU (``--device cuda``) are
    checked as on a machine with one."""
    for text in PAGES.values():
        for body, name in re.findall(r"```toml\n(# (\S+)\n.*?)```", text, flags=re.S):
            (tmp_path / name).write_text(body)
    assert (tmp_path / "grid.toml").exists(), "the manual shows a run file"
    # and the run files the repository ships (benchmarks/*.toml), at their paths
    (tmp_path / "benchmarks").mkdir()
    for shipped in (ROOT / "benchmarks").glob("*.toml"):
        (tmp_path / "benchmarks" / shipped.name).write_text(shipped.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")

    from bench.cli import main as cli
    from bench.core.registry import PluginSelection, Registry
    from bench.studies.gradient_study import study_request

    # and docs/plugins.md's example backends, loaded from their folders (installed or not)
    for folder in ("bench_example_torch_heun", "bench_example_jax"):
        monkeypatch.syspath_prepend(str(ROOT / "examples" / folder))
    registry = Registry.load(PluginSelection(
        builtins=True, entry_points=False,
        extra_modules=("bench_example_torch_heun", "bench_example_jax")))
    assert not registry.load_errors, registry.load_errors
    parser = cli.build_parser()
    pages = documented_bench_commands()
    assert len(pages["README.md"]) >= 8, "README shows the main commands"
    assert sum(len(commands) for commands in pages.values()) >= 14
    seen = set()
    for page, commands in pages.items():
        for command in commands:
            where = f"{page}: {command}"
            args = parser.parse_args(shlex.split(command)[1:])
            seen.add(args.command)
            if args.command == "run":
                assert cli.run_request(args, registry, check=False).cells, where
            elif args.command == "memory":
                assert cli.memory_request(args, registry, check=False).cells, where
            elif args.command == "gradients":
                assert study_request(registry, suites=args.suite, backends=args.backends,
                                     tolerances=args.tolerances, scales=args.scales,
                                     options=dict(args.options)).cells, where
    every = {"list", "run", "report", "compare", "publish", "index", "memory", "gradients"}
    assert every <= seen
    assert every <= {shlex.split(c)[1] for c in pages["README.md"]}, "README shows each command"


def test_readme_commands_are_found_in_code_blocks():
    text = "x\n```bash\nsource .venv/bin/activate\nbench list   # all\n" \
           "a && .venv/bin/bench run --suite mnist\n```\n`bench inline`\n"
    assert readme_bench_commands(text) == ["bench list", ".venv/bin/bench run --suite mnist"]


def relative_links(text: str) -> list[str]:
    """The targets of a markdown page's relative links and images (no scheme, no bare anchor),
    without their anchors, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)
    return [t.split("#", 1)[0] for t in targets
            if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_relative_link_of_the_readme_points_at_a_file_that_exists():
    links = relative_links(README)
    assert "docs/usage.md" in links and "results/mnist-quick-cpu/" in links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_links_are_found_outside_code():
    text = ("[a](docs/a.md) ![b](img/b.png) [c](https://x.org/c) [d](#anchor) "
            "[e](docs/e.md#part) `[f](f.md)`\n```bash\n[g](g.md)\n```\n")
    assert relative_links(text) == ["docs/a.md", "img/b.png", "docs/e.md"]


def test_the_manual_lists_every_page_in_its_navigation():
    """mkdocs.yml's nav holds each docs/*.md page once, and nothing else (mkdocs build --strict
    checks the links; this runs without mkdocs)."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = re.findall(r"^  - [^:\n]+: (\S+\.md)$", config, flags=re.M)
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav) == sorted(set(nav)) and "plugins.md" in nav and "hooks.md" in nav
    assert sorted(set(nav) - {"plugins.md"}) == sorted(set(pages) - {"plugins.md"}), (nav, pages)


def test_readme_development_tools_come_with_the_quick_start_install():
    """Every tool the Development section calls from .venv/bin is installed by the extras of the
    quick start's `pip install -e '.[all,test]'`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    installed = {re.split(r"[<>=\[]", dep)[0] for name in ("all", "test") for dep in extras[name]}
    installed |= {"python", "bench"}
    development = README.split("## Development", 1)[1]
    tools = set(re.findall(r"^\.venv/bin/(\S+)", development, flags=re.M))
    assert {"tox", "mkdocs"} <= tools
    assert tools <= installed, tools - installed
    assert "\ntox -e" not in README
    assert any(dep.startswith("mkdocs") for dep in extras["docs"])
