"""--categories: one parser for data-set categories (free names) and catalogues (checked names, groups)."""

from __future__ import annotations

import pytest

from sage_cli.data.categories import check_categories, parse_categories
from sage_cli.errors import SageError

CATALOGUE = ("washer", "gear", "brick")
GROUPS = {"all": CATALOGUE, "procedural": ("washer", "gear")}


def test_free_names_are_sorted_without_repeats():
    assert parse_categories(None) is None
    assert parse_categories(" screw, bottle ,screw") == ["bottle", "screw"]


def test_catalogue_names_come_back_in_catalogue_order():
    assert parse_categories("Brick,washer", CATALOGUE, GROUPS) == ["washer", "brick"]
    assert parse_categories("ALL", CATALOGUE, GROUPS) == list(CATALOGUE)
    assert parse_categories("procedural", CATALOGUE, GROUPS) == ["washer", "gear"]


@pytest.mark.parametrize("call, expect", [
    (lambda: parse_categories(" , "), "--categories names no category; give names separated by commas"),
    (lambda: parse_categories(",", CATALOGUE), "--categories names no category; known: washer, gear, brick"),
    (lambda: parse_categories("gera", CATALOGUE, GROUPS),
     "unknown category 'gera' (did you mean 'gear'?); known: washer, gear, brick, or 'all' / 'procedural'"),
    (lambda: check_categories({"widget"}, ["nope"]), "no such category: nope (this data set has: widget)"),
])
def test_bad_names_are_one_line_errors(call, expect):
    with pytest.raises(SageError) as e:
        call()
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)


def test_check_categories_accepts_known_names():
    check_categories({"a", "b"}, None)
    check_categories({"a", "b"}, ["b"])
