"""The file helpers three homeworks share: a load-or-build cache, a folder built beside its place
and swapped in, and the values-plus-offsets store of rows of different lengths."""

from __future__ import annotations

import numpy as np
import pytest

from common.core.io import building_folder, cached_array, load_or_build
from common.data.ragged import Ragged, offsets_of


def test_load_or_build_builds_once_and_rebuilds_a_damaged_file(tmp_path):
    built = []

    def build() -> str:
        built.append(1)
        return f"value {len(built)}"

    def load(path):
        text = path.read_text()
        if not text.startswith("value"):
            raise ValueError("damaged")
        return text if text != "value stale" else None

    def save(path, value):
        path.write_text(value)

    path = tmp_path / "cache.txt"
    assert load_or_build(path, build, load=load, save=save) == "value 1"
    assert load_or_build(path, build, load=load, save=save) == "value 1" and len(built) == 1
    path.write_text("garbage")                                    # load raises: rebuilt
    assert load_or_build(path, build, load=load, save=save) == "value 2"
    path.write_text("value stale")                                # load declines: rebuilt
    assert load_or_build(path, build, load=load, save=save) == "value 3"
    assert path.read_text() == "value 3"
    assert load_or_build(None, build, load=load, save=save) == "value 4"  # nothing kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.txt"]


def test_cached_array_is_mapped_from_the_file_and_rebuilt_when_its_shape_changes(tmp_path):
    calls = []

    def build(shape=(4, 3), dtype=np.float32):
        calls.append(shape)
        return np.arange(np.prod(shape), dtype=dtype).reshape(shape)

    path = tmp_path / "a.npy"
    first = cached_array(path, build, shape=(4, 3), dtype=np.float32)
    assert isinstance(first, np.memmap) and np.array_equal(first, np.arange(12).reshape(4, 3))
    again = cached_array(path, build, shape=(4, 3), dtype=np.float32)
    assert len(calls) == 1 and np.array_equal(again, first)
    other = cached_array(path, lambda: build((2, 3), np.float16), shape=(2, 3), dtype="float16")
    assert len(calls) == 2 and other.dtype == np.float16 and other.shape == (2, 3)
    assert np.load(path).shape == (2, 3)                          # the file holds the new one
    plain = cached_array(None, build, shape=(4, 3), dtype=np.float32)
    assert not isinstance(plain, np.memmap) and len(calls) == 3


def test_building_folder_swaps_in_whole_or_leaves_the_old_one(tmp_path):
    folder = tmp_path / "out"
    with building_folder(folder) as stage:
        assert stage.parent == tmp_path and stage != folder and not folder.exists()
        (stage / "a.txt").write_text("1")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert folder.stat().st_mode == plain.stat().st_mode          # not mkdtemp's 0700
    plain.rmdir()
    with pytest.raises(FileExistsError, match="already holds files"):
        with building_folder(folder):
            pass
    with pytest.raises(RuntimeError), building_folder(folder, replace=True) as stage:
        (stage / "b.txt").write_text("2")
        raise RuntimeError("killed half way")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]   # the old one, untouched
    with building_folder(folder, replace=True) as stage:
        (stage / "b.txt").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]   # replaced whole, no mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # nothing left beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    with building_folder(empty) as stage:                          # an empty folder is taken
        (stage / "c.txt").write_text("3")
    assert [p.name for p in empty.iterdir()] == ["c.txt"]


def test_ragged_rows_are_the_rows_it_was_built_from():
    rows = [[3, 1, 4], [], [1, 5], [9, 2, 6, 5]]
    store = Ragged.from_rows(rows, np.int32)
    assert store.values.dtype == np.int32 and store.offsets.tolist() == [0, 3, 3, 5, 9]
    assert len(store) == 4 and store.lengths.tolist() == [3, 0, 2, 4]
    assert [store[i].tolist() for i in range(4)] == rows
    frames = np.arange(18, dtype=np.float32).reshape(9, 2)        # rows of frames, as HW4's
    mels = Ragged(frames, offsets_of(store.lengths))
    assert [m.tolist() for m in (mels[i] for i in range(4))] == \
        [p.tolist() for p in np.split(frames, [3, 3, 5])]
    assert offsets_of([]).tolist() == [0] and len(Ragged.from_rows([], np.int32)) == 0


def test_a_folder_filled_by_another_process_meanwhile_is_never_replaced(tmp_path):
    """Two writers of one output (two `hw4 featurize --out SAME`): the second to finish fails
    and the first one's files stay; nothing of the second is left beside them."""
    folder = tmp_path / "Dataset"
    with pytest.raises(FileExistsError, match="filled by another process meanwhile"):
        with building_folder(folder) as stage:
            (stage / "second.json").write_text("{}")
            folder.mkdir()                                  # the other writer finished first
            (folder / "first.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset"]
    assert [p.name for p in folder.iterdir()] == ["first.json"]


def test_read_text_takes_a_byte_order_mark_and_names_another_encoding(tmp_path):
    from common.core.errors import UserError
    from common.core.io import read_text

    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfid,x\n1,2\n")
    assert read_text(path) == "id,x\n1,2\n"
    path.write_bytes("id\ncafé\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"a.txt: line 2 is not UTF-8 text"):
        read_text(path)
    path.write_bytes("id\n".encode("utf-16"))
    with pytest.raises(UserError, match=r"a.txt: UTF-16 text"):
        read_text(path)
