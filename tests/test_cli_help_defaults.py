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
