"""mypy checks the package as installed: pyproject.toml's ``[tool.mypy]`` lists every installed
subpackage, and ``.ci/mypy_path`` mirrors setuptools' ``package-dir`` mapping (``plugins/`` is
``bench.plugins``, ...) with symlinks, since mypy cannot follow the editable install's import
hook. A folder mapped into ``bench`` without its link would go unchecked, silently."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_mapped_folder_is_type_checked_under_its_package_name():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    mypy = config["tool"]["mypy"]
    mypy_path = ROOT / mypy["mypy_path"].replace("$MYPY_CONFIG_FILE_DIR/", "")
    assert mapping.pop("bench") == "bench"  # the core: checked where it is
    assert mapping, "no folder is mapped into bench"
    for package, folder in mapping.items():
        link = mypy_path.joinpath(*package.split("."))
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), (
            f"{package} (folder {folder}/) needs the link {link.relative_to(ROOT)} -> "
            f"{folder}/ for mypy")
        assert package in mypy["packages"], f"{package} is missing from [tool.mypy] packages"
