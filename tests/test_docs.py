"""The front page stays a front page, and every relative link in README.md and docs/ resolves."""

import glob
import os
import re

import pytest

from tests.helpers import REPO_ROOT

REPO = str(REPO_ROOT)
PAGES = [
    "README.md",
    *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))),
]


def test_readme_is_at_most_10_kb():
    assert os.path.getsize(os.path.join(REPO, "README.md")) <= 10 * 1024


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = open(os.path.join(REPO, page)).read()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    base = os.path.dirname(os.path.join(REPO, page))
    broken = [l for l in links if "://" not in l and not os.path.exists(os.path.join(base, l))]
    assert not broken, f"{page}: broken links {broken}"
