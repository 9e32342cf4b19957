"""Loaders, split recipes, fingerprints and bad-input errors."""
import gzip

import numpy as np
import pytest

from kdbench.datasets import DataConfig, DatasetError, load_dataset, load_folder
from kdbench.datasets.splits import carve_validation, ordered_split, random_split


def test_ordered_split_cuts():
    lists = [np.arange(10), np.arange(5), np.arange(2), np.arange(1)]
    tr, va, te = ordered_split(lists)
    count = lambda p, u: int((p[:, 0] == u).sum())  # noqa: E731
    assert [count(tr, 0), count(va, 0), count(te, 0)] == [8, 1, 1]
    assert [count(tr, 1), count(va, 1), count(te, 1)] == [4, 0, 1]  # 5 items: no validation item
    assert [count(tr, 2), count(va, 2), count(te, 2)] == [1, 0, 1]
    assert [count(tr, 3), count(va, 3), count(te, 3)] == [1, 0, 0]
    assert tr[tr[:, 0] == 0, 1].tolist() == list(range(8))  # the order is kept: test = the last items


def test_random_split_is_seeded_and_disjoint():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, 30, 600), rng.integers(0, 50, 600)], 1), axis=0)
    a = random_split(pairs, seed=3)
    b = random_split(pairs, seed=3)
    c = random_split(pairs, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    keys = [set(map(tuple, p.tolist())) for p in a]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert set().union(*keys) == set(map(tuple, pairs.tolist()))


def test_carve_validation_recipe():
    train = np.array([[0, i] for i in range(20)] + [[1, 3]] + [[2, 7], [2, 9]])
    keep, val = carve_validation(train, seed=0)
    assert int((val[:, 0] == 0).sum()) == 2  # max(1, floor(0.1 * 20))
    assert int((val[:, 0] == 1).sum()) == 0  # n < 2: none
    assert int((val[:, 0] == 2).sum()) == 1
    # the recipe: user 0 first, rng.permutation over its sorted items
    perm = np.random.default_rng(0).permutation(20)
    assert sorted(val[val[:, 0] == 0, 1].tolist()) == sorted(perm[:2].tolist())
    assert len(keep) + len(val) == len(train)


def test_citeulike_matches_spec(shared_data):
    ds = load_dataset("citeulike", shared_data)
    assert ds.stats() == {"users": 5219, "items": 25181, "train": 98405, "valid": 12451, "test": 14724}
    assert ds.fingerprint == load_dataset("citeulike", shared_data).fingerprint
    assert ds.user_ids.max() < 7947  # original ids are line numbers of users.dat


def test_folder_roundtrip_keeps_original_ids(tiny_folder, tiny):
    ds = load_folder(tiny_folder)
    assert ds.stats() == tiny.stats()
    assert ds.user_ids.min() >= 1000 and ds.item_ids.min() >= 5000
    # same content, different ids → a different fingerprint
    assert ds.fingerprint != tiny.fingerprint


def test_pairs_csv_with_header_gz_and_single_file_split(tmp_path):
    folder = tmp_path / "csvds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,rating"] + [f"{u},{i},5" for u in range(20) for i in rng.choice(40, 10, replace=False)]
    with gzip.open(folder / "ratings.csv.gz", "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    ds = load_folder(folder, DataConfig(split_seed=1))
    assert ds.stats()["users"] == 20 and len(ds.train) + len(ds.valid) + len(ds.test) == 200
    assert ds.fingerprint != load_folder(folder, DataConfig(split_seed=2)).fingerprint


def _folder(tmp_path, **files):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)
    return folder


@pytest.mark.parametrize("files, match", [
    ({"train_txt": "0 1 2 5\n1 x 3\n", "test_txt": "0 4\n"}, r"train.txt:2: item id 'x' is not an integer"),
    ({"train_csv": "0,1\n1,2,3\n", "test_csv": "0,4\n"}, r"train.csv:2: expected 2 columns"),
    ({"train_txt": "", "test_txt": "0 4\n"}, r"train.txt: the file is empty"),
    ({"train_txt": "0 1 2\n1 2 3\n", "test_txt": "0 9\n"}, r"test.txt:1: item 9 never occurs in train"),
    ({"train_txt": "0 1 2\n1 2 3\n", "test_txt": "0 1\n7 2\n"}, r"test.txt:2: user 7 has test items but no train"),
    ({"train_txt": "0 1 2\n"}, r"no test file"),
    ({"readme_md": "hello"}, r"no train/test or all/ratings file"),
    ({"train_txt": "0 1 2\n-1 2\n", "test_txt": "0 2\n"}, r"train.txt:2: user id -1 is negative"),
])
def test_bad_input_errors_name_file_and_line(tmp_path, files, match):
    with pytest.raises(DatasetError, match=match):
        load_folder(_folder(tmp_path, **files))


def test_cold_items_can_be_allowed(tmp_path):
    folder = _folder(tmp_path, train_txt="0 1 2 3\n1 2 3 4\n", test_txt="0 9\n")
    ds = load_folder(folder, DataConfig(allow_cold_items=True))
    assert ds.n_items == 5


def test_unknown_dataset_name_suggests(tmp_path):
    with pytest.raises(KeyError, match="did you mean 'citeulike'"):
        load_dataset("citeulik")


def test_missing_real_data_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="gowalla.*not found"):
        load_dataset("gowalla", tmp_path)
