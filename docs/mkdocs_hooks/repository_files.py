"""MkDocs hook: the repository's published results and example package in the site.

The manual links to files outside ``docs/`` (``../results/mnist-quick-cpu/NOTES.md``,
``../examples/...``) so that the same links work when the pages are read on the repository's
web view. MkDocs only knows files under ``docs_dir`` and, in ``--strict`` mode, refuses a link to
anything else. This hook adds every file of :data:`FOLDERS` to the build under its own
``../<folder>/...`` source path (so those links resolve and are checked like any other), written
to ``repository/<folder>/...`` in the site: markdown files become pages outside the navigation,
everything else (tables, plots, the self-contained ``index.html`` pages) is copied as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

#: Repository folders the manual links into, relative to the folder that holds mkdocs.yml.
FOLDERS = ("results", "examples")
#: Names never copied: caches and build output that an install leaves beside the sources.
SKIPPED = ("__pycache__", "build", "dist")
#: Where those files go in the built site.
SITE_FOLDER = "repository"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the files of :data:`FOLDERS` (hidden files, caches and build output left out)."""
    root = Path(config.config_file_path).resolve().parent
    docs = Path(config.docs_dir).resolve()
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root)
            if not path.is_file() or any(_skipped(part) for part in rel.parts):
                continue
            src_uri = Path(os.path.relpath(path, docs)).as_posix()
            # The destination a file at repository/<rel> inside docs/ would get.
            dest_uri = File(f"{SITE_FOLDER}/{rel.as_posix()}", None, config.site_dir,
                            config.use_directory_urls).dest_uri
            files.append(File(src_uri, str(docs), config.site_dir, config.use_directory_urls,
                              dest_uri=dest_uri, inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED or name.endswith(".egg-info")
