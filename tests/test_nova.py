"""NOVA annotations: parquet/CSV reading, validation, join by file name, path safety."""

from __future__ import annotations

import csv
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdiff_cli.data.nova import (
    NovaRecord,
    find_annotations,
    is_t2,
    join_images,
    name_only,
    parse_boxes,
    read_annotations,
)
from cdiff_cli.errors import DataError

BOX_TYPE = pa.struct(
    [("x", pa.float64()), ("y", pa.float64()), ("width", pa.float64()), ("height", pa.float64()),
     ("source", pa.string())]
)

ROWS = [
    {"filename": "case1_a.png", "case_id": "1", "scan_id": "s1", "caption_text": "Axial T2-weighted image, mass.",
     "gold": [(10.0, 20.0, 30.0, 40.0)], "other": {"rater1": [(11.0, 21.0, 29.0, 39.0)]}},
    {"filename": "case2_b.png", "case_id": "2", "scan_id": "s2", "caption_text": "FLAIR shows lesions.",
     "gold": [(1.5, 2.5, 3.0, 4.0), (100.0, 120.0, 8.0, 9.0)], "other": {}},
    {"filename": "case3_c.png", "case_id": "3", "scan_id": "s3", "caption_text": "DWI, no box",
     "gold": [], "other": {}},
]


def write_parquet(path: Path, rows: list[dict], with_other: bool = True) -> Path:
    bboxes = []
    for r in rows:
        boxes = [dict(x=b[0], y=b[1], width=b[2], height=b[3], source="gold") for b in r["gold"]]
        if with_other:
            for src, bs in r["other"].items():
                boxes += [dict(x=b[0], y=b[1], width=b[2], height=b[3], source=src) for b in bs]
        bboxes.append(boxes)
    table = pa.table(
        {
            "filename": [r["filename"] for r in rows],
            "case_id": [r["case_id"] for r in rows],
            "scan_id": [r["scan_id"] for r in rows],
            "caption_text": [r["caption_text"] for r in rows],
            "image_path": [f"images/{r['filename']}" for r in rows],
            "meta": [json.dumps({"age": 40}) for _ in rows],
            "bboxes": pa.array(bboxes, type=pa.list_(BOX_TYPE)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_csv(path: Path, rows: list[dict], bbox_text=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "case_id", "scan_id", "caption_text", "bbox_gold"])
        for r in rows:
            g = r["gold"]
            text = repr({"x": [b[0] for b in g], "y": [b[1] for b in g], "width": [b[2] for b in g],
                         "height": [b[3] for b in g]})
            w.writerow([r["filename"], r["case_id"], r["scan_id"], r["caption_text"],
                        text if bbox_text is None else bbox_text])
    return path


def touch_images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        (folder / n).write_bytes(b"x")
        out.append(folder / n)
    return sorted(out)


# --------------------------------------------------------------------------------------
# Reading


def test_parquet_nested_form(tmp_path):
    recs = read_annotations(write_parquet(tmp_path / "a.parquet", ROWS), images_root=tmp_path / "img")
    assert [r.filename for r in recs] == [r["filename"] for r in ROWS]
    assert recs[0].gold_boxes == [(10.0, 20.0, 30.0, 40.0)]
    assert recs[0].other_boxes == {"rater1": [(11.0, 21.0, 29.0, 39.0)]}
    assert recs[1].gold_boxes == ROWS[1]["gold"] and recs[2].gold_boxes == []
    assert recs[0].caption.startswith("Axial T2") and recs[0].case_id == "1" and recs[0].scan_id == "s1"
    assert recs[0].image_path == tmp_path / "img" / "case1_a.png"


def test_parquet_and_csv_give_identical_records(tmp_path):
    a = read_annotations(write_parquet(tmp_path / "a.parquet", ROWS, with_other=False))
    b = read_annotations(write_csv(tmp_path / "a.csv", ROWS))
    assert a == b


def test_parquet_bboxes_as_json_string_and_int_case_id(tmp_path):
    table = pa.table({
        "filename": ["x.png"], "case_id": [7], "caption_text": ["T2"],
        "bboxes": [json.dumps([{"x": 1, "y": 2, "width": 3, "height": 4, "source": "gold"},
                               {"x": 5, "y": 6, "width": 7, "height": 8, "source": "r2"}])],
    })
    pq.write_table(table, tmp_path / "n.parquet")
    (r,) = read_annotations(tmp_path / "n.parquet")
    assert r.gold_boxes == [(1.0, 2.0, 3.0, 4.0)] and r.other_boxes == {"r2": [(5.0, 6.0, 7.0, 8.0)]}
    assert r.case_id == "7" and r.image_path is None


@pytest.mark.parametrize(
    "value, gold, other",
    [
        (None, [], {}),
        (float("nan"), [], {}),
        ("", [], {}),
        ("{'x': [], 'y': [], 'width': [], 'height': []}", [], {}),
        ('{"x": [1], "y": [2], "width": [3], "height": [4]}', [(1, 2, 3, 4)], {}),
        ({"x": 1, "y": 2, "w": 3, "h": 4}, [(1, 2, 3, 4)], {}),
        ([1, 2, 3, 4], [(1, 2, 3, 4)], {}),
        ([[1, 2, 3, 4], None, (5, 6, 7, 8)], [(1, 2, 3, 4), (5, 6, 7, 8)], {}),
        (np.array([{"x": 1, "y": 2, "width": 3, "height": 4, "source": "gold"},
                   {"x": 1, "y": 2, "width": 3, "height": 4, "source": None}], dtype=object),
         [(1, 2, 3, 4), (1, 2, 3, 4)], {}),
        ({"x": np.array([1.0]), "y": np.array([2.0]), "width": np.array([3.0]), "height": np.array([4.0]),
          "source": np.array(["r1"], dtype=object)}, [], {"r1": [(1, 2, 3, 4)]}),
        ({"gold": {"x": [1], "y": [2], "width": [3], "height": [4]}, "rater": [[5, 6, 7, 8]]},
         [(1, 2, 3, 4)], {"rater": [(5, 6, 7, 8)]}),
        ({"x": ["1.5"], "y": [2], "width": [3], "height": [4]}, [(1.5, 2, 3, 4)], {}),
    ],
)
def test_parse_boxes_lenient_forms(value, gold, other):
    g, o = parse_boxes(value, "t")
    assert g == [tuple(map(float, b)) for b in gold]
    assert o == {k: [tuple(map(float, b)) for b in v] for k, v in other.items()}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{'x': [1], 'y': [2], 'width': [-3], 'height': [4]}", "negative size"),
        ("{'x': ['a'], 'y': [2], 'width': [3], 'height': [4]}", "not a finite number"),
        ("{'x': [1, 2], 'y': [2], 'width': [3], 'height': [4]}", "differ in length"),
        ("{'x': [1], 'y': [2], 'width': [3]}", "missing 'height'"),
        ("{'x': [True], 'y': [2], 'width': [3], 'height': [4]}", "not a number"),
        ("{'x': [float('nan')], 'y': [2], 'width': [3], 'height': [4]}", "cannot parse"),
        ("{'x': [1e999], 'y': [2], 'width': [3], 'height': [4]}", "finite"),
        ("not a box", "cannot parse"),
        ("[1, 2, 3]", "must be a dict"),
        ("42", "must be a list or dict"),
    ],
)
def test_malformed_box_names_file_and_row(tmp_path, text, needle):
    p = write_csv(tmp_path / "bad.csv", ROWS[:2], bbox_text=None)
    rows = list(csv.reader(p.read_text().splitlines()))
    rows[2][4] = text  # second data row
    with p.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataError) as e:
        read_annotations(p)
    msg = str(e.value)
    assert str(p) in msg and "row 2" in msg and "case2_b.png" in msg and needle in msg
    assert "\n" not in msg


def test_literal_eval_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    with pytest.raises(DataError, match="cannot parse"):
        parse_boxes(payload, "row 1")
    with pytest.raises(DataError):
        parse_boxes("{'x': [__import__('os').getcwd()], 'y': [1], 'width': [1], 'height': [1]}", "row 1")
    assert not marker.exists()


@pytest.mark.parametrize("drop", ["filename", "caption_text", "bboxes"])
def test_missing_parquet_column(tmp_path, drop):
    p = write_parquet(tmp_path / "a.parquet", ROWS)
    table = pq.read_table(p).drop_columns([drop])
    pq.write_table(table, p)
    with pytest.raises(DataError) as e:
        read_annotations(p)
    assert str(p) in str(e.value) and f"'{drop}'" in str(e.value)


def test_missing_csv_column_and_unreadable_files(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("filename,caption_text\nx.png,T2\n")
    with pytest.raises(DataError, match=r"a\.csv: missing column 'bboxes'"):
        read_annotations(p)
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet"):
        read_annotations(bad)
    latin = tmp_path / "c.csv"
    latin.write_bytes(b"filename,caption_text,bbox_gold\n\xff\xfe\xfa,T2,\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        read_annotations(latin)
    with pytest.raises(DataError, match="not found"):
        read_annotations(tmp_path / "missing.parquet")
    empty = tmp_path / "e.csv"
    empty.write_text("filename,caption_text,bbox_gold\n")
    with pytest.raises(DataError, match="no annotation rows"):
        read_annotations(empty)


# --------------------------------------------------------------------------------------
# Finding the file


def test_find_annotations(tmp_path):
    root = tmp_path / "nova"
    (root / "images").mkdir(parents=True)
    assert find_annotations(root) is None
    other = write_csv(root / "notes.csv", ROWS)
    assert find_annotations(root) == other
    pq_any = write_parquet(root / "data" / "ann.parquet", ROWS)
    assert find_annotations(root) == pq_any  # parquet beats csv
    exact = write_parquet(root / "data" / "nova-v1.parquet", ROWS)
    assert find_annotations(root) == exact
    # pointed at the images folder: one level up / data/
    assert find_annotations(root / "images") == exact


def test_find_annotations_one_level_up_ignores_unrelated_csv(tmp_path):
    (tmp_path / "images").mkdir()
    write_csv(tmp_path / "unrelated.csv", ROWS)
    assert find_annotations(tmp_path / "images") is None
    named = write_csv(tmp_path / "nova_annotations.csv", ROWS)
    assert find_annotations(tmp_path / "images") == named


# --------------------------------------------------------------------------------------
# Joining and path safety


def _rec(name: str, caption: str = "T2") -> NovaRecord:
    return NovaRecord(filename=name, image_path=None, caption=caption, case_id=None, gold_boxes=[])


def test_join_by_filename_not_position(tmp_path):
    names = [f"img_{i:02d}.png" for i in range(12)]
    images = touch_images(tmp_path / "images", names + ["extra.png"])
    recs = [_rec(n, caption=f"cap {n}") for n in names] + [_rec("ghost.png")]
    random.Random(0).shuffle(recs)
    matched, lone_images, lone_records = join_images(recs, images, "ann.csv", tmp_path / "images")
    assert [p for p, _ in matched] == [p for p in images if p.name != "extra.png"]
    for p, r in matched:
        assert r.filename == p.name and r.caption == f"cap {p.name}" and r.image_path == p
    assert [p.name for p in lone_images] == ["extra.png"]
    assert [r.filename for r in lone_records] == ["ghost.png"]


def test_join_none_matching_is_an_error(tmp_path):
    images = touch_images(tmp_path / "images", ["a.png", "b.png"])
    with pytest.raises(DataError) as e:
        join_images([_rec("x.png"), _rec("y.png")], images, tmp_path / "ann.parquet", tmp_path / "images")
    msg = str(e.value)
    assert "annotations in" in msg and "ann.parquet" in msg and "match none of the 2 images" in msg
    assert str(tmp_path / "images") in msg


def test_join_duplicates_are_errors(tmp_path):
    images = touch_images(tmp_path / "images", ["a.png"])
    with pytest.raises(DataError, match="more than one row"):
        join_images([_rec("a.png"), _rec("sub/a.png")], images)
    dup = images + touch_images(tmp_path / "images" / "sub", ["a.png"])
    with pytest.raises(DataError, match="more than one image"):
        join_images([_rec("a.png")], dup)


@pytest.mark.parametrize(
    "name, base",
    [("../outside.png", "outside.png"), ("/etc/passwd", "passwd"), ("..\\..\\win.png", "win.png"),
     ("sub/../../x.png", "x.png"), ("images/ok.png", "ok.png")],
)
def test_traversal_names_stay_inside_root(tmp_path, name, base):
    root = tmp_path / "nova" / "images"
    root.mkdir(parents=True)
    (tmp_path / "nova" / "outside.png").write_bytes(b"secret")
    p = tmp_path / "ann.csv"
    with p.open("w", newline="") as f:
        csv.writer(f).writerows([["filename", "caption_text", "bbox_gold"], [name, "T2", ""]])
    (rec,) = read_annotations(p, images_root=root)
    assert rec.filename == base
    assert rec.image_path.parent == root and rec.image_path.resolve().is_relative_to(root.resolve())
    images = touch_images(root, ["inside.png", base])
    matched, _, _ = join_images([rec], images)
    assert [m[0] for m in matched] == [root / base]


@pytest.mark.parametrize("bad", ["..", ".", "", "dir/", "a\x00b.png"])
def test_unusable_names(bad):
    with pytest.raises(DataError):
        name_only(bad, "row 3")


# --------------------------------------------------------------------------------------
# T2 filter


@pytest.mark.parametrize(
    "caption, ref, strict",
    [
        ("Axial T2-weighted MRI", True, True),
        ("T2-FLAIR hyperintensity", True, True),
        ("T2* GRE blooming", True, False),
        ("T2WI shows", True, True),  # T2-weighted image
        ("axial t2 image", False, True),
        ("FLAIR and DWI", False, False),
        ("PT2 stage", True, False),
        ("", False, False),
        (None, False, False),
    ],
)
def test_is_t2(caption, ref, strict):
    assert is_t2(caption) is ref
    assert is_t2(caption, strict=True) is strict


# --------------------------------------------------------------------------------------
# Properties

coord = st.floats(min_value=0, max_value=4096, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=0, max_value=1024, allow_nan=False, allow_infinity=False)
boxes_st = st.lists(st.tuples(coord, coord, size, size), max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(boxes_st, min_size=1, max_size=4), st.data())
def test_random_boxes_round_trip_csv_and_parquet(all_boxes, data):
    rows = [
        {"filename": f"f{i}.png", "case_id": str(i), "scan_id": f"s{i}",
         "caption_text": data.draw(st.text(max_size=20)).replace("\x00", "").strip() or "c", "gold": boxes, "other": {}}
        for i, boxes in enumerate(all_boxes)
    ]
    with tempfile.TemporaryDirectory() as d:
        a = read_annotations(write_csv(Path(d) / "a.csv", rows))
        b = read_annotations(write_parquet(Path(d) / "a.parquet", rows, with_other=False))
    assert a == b
    assert [r.gold_boxes for r in a] == [[tuple(map(float, bx)) for bx in boxes] for boxes in all_boxes]


_junk_alphabet = st.sampled_from(list("{}[]()'\":,.-+eE0123456789 xywidthegsourcNaIf_\\\n") + ["None", "True", "nan"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_junk_alphabet, max_size=60).map("".join)))
def test_junk_box_strings_raise_only_dataerror(text):
    try:
        gold, other = parse_boxes(text, "row 1")
    except DataError as e:
        assert "row 1" in str(e)
    else:
        assert all(len(b) == 4 and b[2] >= 0 and b[3] >= 0 for b in gold)


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=40))
def test_junk_in_csv_file_raises_only_dataerror(text):
    with tempfile.TemporaryDirectory() as d:
        p = write_csv(Path(d) / "j.csv", ROWS[:1], bbox_text=text)
        try:
            read_annotations(p)
        except DataError as e:
            assert str(p) in str(e)


def test_deeply_nested_string_is_a_dataerror():
    with pytest.raises(DataError):
        parse_boxes("[" * 100_000 + "]" * 100_000, "row 1")
