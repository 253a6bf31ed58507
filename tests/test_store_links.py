"""The local store never follows a link: objects are read and written only inside its root."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import StoreError
from pipeline.queues import check_name
from pipeline.store import LocalStore


@pytest.fixture
def planted(tmp_path):
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(b"outside")
    store = LocalStore(root)
    (root / "approvals").mkdir()
    os.symlink(outside, root / "approvals" / "inc1")  # a linked folder inside the store
    (root / "receipts").mkdir()
    os.symlink(outside / "secret.json", root / "receipts" / "r.json")  # a linked file
    return store, outside


def test_writes_through_a_linked_folder_are_refused(planted):
    store, outside = planted
    with pytest.raises(StoreError):
        store.put("approvals/inc1/a.json", b"x")
    with pytest.raises(StoreError):
        store.put_if_absent("approvals/inc1/b.json", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]


def test_reads_through_links_are_refused(planted):
    store, outside = planted
    with pytest.raises(StoreError):
        store.get("approvals/inc1/secret.json")
    with pytest.raises(StoreError):
        store.get("receipts/r.json")
    assert not store.exists("receipts/r.json") and store.version("receipts/r.json") is None
    assert list(store.list("approvals/")) == [] and list(store.list("receipts/")) == []


def test_a_linked_file_is_replaced_not_written_through(planted):
    store, outside = planted
    store.put("receipts/r.json", b"mine")
    assert (outside / "secret.json").read_bytes() == b"outside"
    assert store.get("receipts/r.json") == b"mine"
    assert not store.put_if_absent("receipts/r.json", b"again")  # exists now: write-once holds


def test_plain_use_still_works(tmp_path):
    store = LocalStore(tmp_path)
    store.put("a/b/c.json", b"1")
    assert store.put_if_absent("a/b/d.json", b"2") and not store.put_if_absent("a/b/d.json", b"3")
    assert store.get("a/b/d.json") == b"2" and store.exists("a/b/c.json")
    assert list(store.list("a/")) == ["a/b/c.json", "a/b/d.json"] and list(store.list("")) == list(store.list("a"))


@pytest.mark.parametrize("name", ["inc1\n", "inc1\r\n", "\ninc1", "inc/1", "..", "a..b"])
def test_names_with_a_newline_or_a_separator_are_refused(name):
    with pytest.raises(ValueError):
        check_name("incident", name)
