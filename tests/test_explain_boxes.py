"""Box readers: VOC scaled from <size> to the image read, COCO, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tbclf.data.records import Record
from tbclf.errors import DataError
from tbclf.explain.boxes import Box, box_mask, match_boxes, read_boxes, read_coco, read_voc


def _voc(path, name, width, height, boxes):
    objs = "".join(
        f"<object><name>TB</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    path.write_text(
        f"<annotation><filename>{name}</filename><size><width>{width}</width>"
        f"<height>{height}</height></size>{objs}</annotation>"
    )
    return path


def test_voc_boxes_scale_from_size_to_the_image_read_non_square(tmp_path):
    # annotated on a 1000x2000 original; the image read is 250x400 (x / 4, y / 5)
    path = _voc(tmp_path / "a.xml", "a.png", 1000, 2000, [(101, 201, 300, 700)])
    found = read_voc(path)
    assert (found.key, found.width, found.height) == ("a", 1000, 2000)
    (box,) = found.scaled_to(250, 400)
    assert (box.x0, box.x1) == pytest.approx((25.0, 75.0))  # [xmin - 1, xmax] / 4
    assert (box.y0, box.y1) == pytest.approx((40.0, 140.0))  # [ymin - 1, ymax] / 5
    mask = box_mask([box], 400, 250)
    assert mask.sum() == 50 * 100
    assert mask[40, 25] and mask[139, 74] and not mask[39, 25] and not mask[40, 75]


def test_coco_boxes_and_images_without_annotations(tmp_path):
    doc = {
        "images": [
            {"id": 1, "file_name": "tb/x1.png", "width": 512, "height": 256},
            {"id": 2, "file_name": "x2.png", "width": 512, "height": 512},
        ],
        "annotations": [{"id": 9, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 3}],
        "categories": [{"id": 3, "name": "ActiveTuberculosis"}],
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(doc))
    found = read_coco(path)
    assert set(found) == {"x1", "x2"}
    assert found["x1"].boxes == (Box(10, 20, 40, 60, "ActiveTuberculosis"),)
    assert found["x2"].boxes == ()
    (scaled,) = found["x1"].scaled_to(256, 128)
    assert (scaled.x0, scaled.y0, scaled.x1, scaled.y1) == pytest.approx((5, 10, 20, 30))
    assert read_boxes(path).keys() == found.keys()


def test_box_outside_its_image_is_refused_by_name(tmp_path):
    path = _voc(tmp_path / "bad.xml", "bad", 100, 100, [(10, 10, 150, 50)])
    with pytest.raises(DataError, match=r"bad\.xml, object 1.*outside its 100x100 image"):
        read_voc(path)
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 50}],
        "annotations": [{"image_id": 1, "bbox": [-20, 0, 10, 10]}],
    }
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotations\[0\].*outside"):
        read_coco(tmp_path / "c.json")


def test_entities_and_missing_size_are_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>')
    with pytest.raises(DataError, match="DTD or entities"):
        read_voc(bomb)
    nosize = tmp_path / "n.xml"
    nosize.write_text("<annotation><filename>n</filename></annotation>")
    with pytest.raises(DataError, match="no <size>"):
        read_voc(nosize)


def _records(tmp_path, names):
    return [Record(id=n, path=tmp_path / f"{n}.png", label=None, source="x") for n in names]


def test_images_without_boxes_and_boxes_without_images(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    _voc(ann / "a.xml", "a", 10, 10, [(1, 1, 5, 5)])
    _voc(ann / "b.xml", "b", 10, 10, [])  # an annotation with no object
    _voc(ann / "ghost.xml", "ghost", 10, 10, [(1, 1, 5, 5)])
    boxes = read_boxes(ann)
    with pytest.raises(DataError, match=r"1 image\(s\) have no boxes: b\b.*--unmatched skip"):
        match_boxes(_records(tmp_path, ["a", "b"]), boxes)
    with pytest.raises(DataError, match=r"not in the image folder: ghost.*ghost\.xml"):
        match_boxes(_records(tmp_path, ["a"]), {k: boxes[k] for k in ("a", "ghost")})
    matched = match_boxes(_records(tmp_path, ["a", "b", "c"]), boxes, unmatched="skip")
    assert [r.id for r, _ in matched.pairs] == ["a"]
    assert matched.without_boxes == ["b", "c"] and matched.without_image == ["ghost"]


def test_box_mask_union_of_boxes():
    mask = box_mask([Box(0, 0, 2, 2), Box(1, 1, 4, 3)], 5, 5)
    expected = np.zeros((5, 5), bool)
    expected[0:2, 0:2] = True
    expected[1:3, 1:4] = True
    assert np.array_equal(mask, expected)
