"""Recipes: validated with pydantic, one-line errors naming the key and the file."""

import subprocess
import sys

import pytest

from curation import recipe as curation_recipe
from minisigma.core.errors import UserError


def test_default_recipes_load():
    for name in ["default", "tiny"]:
        r = curation_recipe.load(f"recipes/curation/{name}.yaml")
        assert r.sources and r.crawl.allow_loopback


@pytest.mark.parametrize("body, key, problem", [
    ("name: x\nsources: [{type: localdocs}]\ncrawl: {max_pagez: 3}\n", "crawl.max_pagez", "unknown key"),
    ("name: x\nsources: [{type: localdocs}]\ncrawl: {max_pages: lots}\n", "crawl.max_pages", "valid integer"),
    ("name: x\nsources: [{type: nosuch}]\n", "sources.0", "tag"),
    ("sources: []\n", "name", "Field required"),
])
def test_bad_recipe_is_one_line_naming_key_and_file(tmp_path, body, key, problem):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(UserError) as e:
        curation_recipe.load(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and key in msg and problem in msg


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nsources: [{type: localdocs}]\nextract: {timeout_s: [1]}\n")
    r = subprocess.run([sys.executable, "-m", "minisigma.cli", "curate", str(p), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "extract.timeout_s" in lines[0]


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        curation_recipe.load(p)
    with pytest.raises(UserError, match="not found"):
        curation_recipe.load(tmp_path / "nope.yaml")
