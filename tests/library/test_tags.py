"""The tag contract as the README states it: the table is tbgrad/tags.py's,
and every flag of `tbgrad train` is documented."""

from __future__ import annotations

import re
from pathlib import Path

from tbgrad import tags
from tbgrad.cli.train import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tag_table_is_generated_from_tags_module():
    text = README.read_text()
    block = re.search(r"<!-- tags:begin -->\n(.*?)\n<!-- tags:end -->", text, re.S)
    assert block, "README has no <!-- tags:begin --> ... <!-- tags:end --> block"
    assert block.group(1) == tags.markdown_table(), (
        "README's tag table differs from tbgrad.tags.markdown_table(); paste its output"
    )


def test_tag_table_names_every_family_written():
    table = tags.markdown_table()
    for family in tags.families(per_layer=True):
        assert f"`{tags.TRAIN_DIR}/{family}/<layer>`" in table
    assert f"`{tags.TRAIN_DIR}/{tags.GRAD_RATIO}`" in table
    assert f"`{tags.TRAIN_DIR}/{tags.BATCH_GRAD_MEAN_ABS}/<layer>`" in table


def test_readme_documents_every_train_flag():
    text = README.read_text()
    flags = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if f"`{flag}" not in text]
    assert not missing, f"README does not document {missing}"


def test_readme_is_a_users_page():
    assert len(README.read_text()) <= 15_000
