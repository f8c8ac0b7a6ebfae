"""The README's Python section: its code blocks, in order, for the tests that run them."""

import re

from conftest import ROOT


def python_section():
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Python\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(lang):
    return re.findall(r"```" + lang + r"\n(.*?)```", python_section(), re.S)
