"""One truthful step rule per solver (issue 31): no page says that torchdiffeq and diffrax take the
same dopri5 steps (their last step, error norm and first step differ), and the manual's step-rule
table says what each library does at the first step, in its error norm and at the last step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         # and the docstrings of the code that solves (a module said it too)
         *sorted((ROOT / "plugins").glob("*.py")), *sorted((ROOT / "frameworks").rglob("*.py")),
         *sorted((ROOT / "suites").glob("*.py"))]


def same_steps_claims(text: str) -> list[str]:
    """Sentences that name torchdiffeq and diffrax and say they take the same steps."""
    sentences = re.split(r"(?<=[.;:|])\s+", " ".join(text.split()))
    return [s for s in sentences
            if "torchdiffeq" in s and "diffrax" in s
            and re.search(r"(?<!not )the same (?:accepted and rejected )?steps", s)]


def test_the_check_reads_a_claim_and_lets_its_denial_pass():
    assert same_steps_claims("The diffrax backends start with it, so that diffrax and "
                             "torchdiffeq take the same steps |")
    assert not same_steps_claims("| dopri5 | torchdiffeq and diffrax: same tableau, not the "
                                 "same steps |")
    assert same_steps_claims("With the same first step, torchdiffeq and diffrax take the same "
                             "accepted and rejected steps.")


def test_no_page_says_torchdiffeq_and_diffrax_take_the_same_steps():
    found = {str(p.relative_to(ROOT)): same_steps_claims(p.read_text()) for p in PAGES}
    assert not {k: v for k, v in found.items() if v}, found


def test_the_step_rule_table_names_each_librarys_rules():
    text = (ROOT / "docs" / "usage.md").read_text()
    section = text.split("### Step rules", 1)[1].split("\n### ", 1)[0]
    assert "| library (backends) | first step | error norm | last step | evaluations |" in section
    for library in ("torchdiffeq", "diffrax", "torchode", "TorchDiffEqPack"):
        assert re.search(rf"^\| {library} ", section, re.M), library
