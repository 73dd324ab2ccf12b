"""Issue 32: every limit's default is in --help (``--timeout`` had none), and ``bench list``
gives no time for a budget that was not measured on this kind of device."""

from __future__ import annotations

import pytest

from bench.cli import main as cli


@pytest.mark.parametrize("command", ["run", "memory", "gradients"])
def test_timeout_default_is_in_help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    at = text.index("--timeout SECONDS ")  # the option's entry, not the usage line's
    assert "(default: none," in text[at:at + 200]


def test_mnist_paper_budget_quotes_the_measured_cpu_figure():
    """bench list's MNIST paper budget gives the CPU time that was measured (and where), not an
    unmeasured one: the same step time and epoch time as results/mnist-quick-cpu/NOTES.md."""
    import re
    from pathlib import Path

    from bench.suites.mnist_data import BUDGETS

    text = BUDGETS["paper"].description
    step, epoch = re.search(r"step took ([0-9.]+ s)\b.*?(\d+ min) an epoch", text).groups()
    assert "results/mnist-quick-cpu" in text and "loaded" in text
    notes = " ".join((Path(__file__).resolve().parent.parent / "results" / "mnist-quick-cpu"
                      / "NOTES.md").read_text().split())
    assert f"took {step}" in notes and f"{epoch.replace('min', 'minutes')} an epoch" in notes


def test_claims_help_says_html_is_a_whole_page(capsys):
    """`bench claims --format html` prints a self-contained page (<!DOCTYPE html>...), with or
    without --per-folder: its help said "a table to put in a page" (docs/claims.md, a fragment)."""
    with pytest.raises(SystemExit):
        cli.main(["claims", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    at = text.index("--format {markdown,csv,html} ")  # the option's entry, not the usage line's
    entry = text[at:at + 200]
    assert "self-contained" in entry and "to put in a page" not in entry
