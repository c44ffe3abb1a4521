"""The shipped method catalogue (reads only the packaged JSON)."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from prunekit.errors import UnknownNameError
from prunekit.methods.catalogue import CatalogueEntry, catalogue, entry

# Rows in the S and U tables of the project's METHODS.md when the JSON was generated.
N_STRUCTURED = 47
N_UNSTRUCTURED = 24


def _raw() -> list[dict[str, object]]:
    text = resources.files("prunekit").joinpath("methods", "catalogue.json").read_text("utf-8")
    return json.loads(text)


def test_ids_unique_and_counts() -> None:
    ids = [e["id"] for e in _raw()]
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    types = Counter(e.type for e in catalogue())
    assert types == {"S": N_STRUCTURED, "U": N_UNSTRUCTURED}


def test_every_entry_well_formed() -> None:
    fields = {"id", "type", "title", "venue", "year", "link", "computation", "wave"}
    for raw in _raw():
        assert set(raw) == fields, raw.get("id")
    for e in catalogue():
        assert isinstance(e, CatalogueEntry)
        assert e.type in ("S", "U")
        assert e.title.strip() and e.computation.strip(), e.id
        assert e.year is None or 1990 < e.year < 2100
        assert e.link is None or e.link.startswith("http")


def test_fpgm() -> None:
    e = entry("fpgm")
    assert e.type == "S"
    assert "Geometric Median" in e.title
    assert (e.venue, e.year) == ("CVPR", 2019)
    assert e.citation.startswith(e.title + " (CVPR 2019) http")


def test_lth() -> None:
    e = entry("lth")
    assert e.type == "U"
    assert (e.venue, e.year) == ("ICLR", 2019)
    assert e.link is not None and "openreview.net" in e.link


def test_spot_ids_present() -> None:
    for method_id in ("slimming", "nm_sparsity", "l1_filter", "magnitude", "one_by_n", "oto"):
        assert entry(method_id).id == method_id
    assert entry("slimming").type == "S"
    assert entry("nm_sparsity").type == "U"


def test_citation_without_venue() -> None:
    e = CatalogueEntry("x", "U", "Some Title", None, None, None, "c", None)
    assert e.citation == "Some Title"


def test_unknown_id() -> None:
    with pytest.raises(UnknownNameError) as info:
        entry("no_such_method")
    message = str(info.value)
    assert "no_such_method" in message and "fpgm" in message and "lth" in message
    with pytest.raises(KeyError):
        entry("no_such_method")


def test_catalogue_returns_copy() -> None:
    first = catalogue()
    first.clear()
    assert len(catalogue()) == N_STRUCTURED + N_UNSTRUCTURED


def test_every_implemented_method_has_its_fidelity_section_and_algorithm_docstring() -> None:
    import importlib
    import re
    from pathlib import Path

    from prunekit import methods

    page = (Path(__file__).parents[1] / "docs" / "fidelity.md").read_text()
    sections = set(re.findall(r"^## (\S+)\s*$", page, re.M))
    for method_id in methods.METHODS.names():
        assert method_id in sections, f"docs/fidelity.md has no section for {method_id!r}"
        module = importlib.import_module(f"prunekit.methods.{method_id}")
        doc = module.__doc__ or ""
        assert len(doc) > 200, f"prunekit/methods/{method_id}.py has no algorithm docstring"
