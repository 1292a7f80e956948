import pytest
from PIL import Image

from awares_rl.core.crops import (
    CROP_NAMES,
    boxes_to_crops,
    crop_boxes,
    cut_crops,
    iou,
    low_res_view,
    retained_token_ratio,
)


def test_crop_names_order():
    assert CROP_NAMES == ("top-left", "top-right", "bottom-left", "bottom-right", "center",
                          "top", "bottom", "left", "right")


def test_crop_boxes_1000x600():
    # w = max(100, 1000 // 2) = 500, h = max(100, 600 // 2) = 300
    assert crop_boxes(1000, 600, range(9)) == [
        (0, 0, 500, 300), (500, 0, 1000, 300), (0, 300, 500, 600), (500, 300, 1000, 600),
        (250, 150, 750, 450),  # ((W-w)//2, (H-h)//2, (W+w)//2, (H+h)//2)
        (0, 0, 1000, 300), (0, 300, 1000, 600), (0, 0, 500, 600), (500, 0, 1000, 600),
    ]


def test_odd_and_narrow_sizes():
    # 150 x 101: w = max(100, 75) = 100, h = max(100, 50) = 100
    assert crop_boxes(150, 101, [1, 3, 4]) == [(50, 0, 150, 100), (50, 1, 150, 101), (25, 0, 125, 100)]
    # 801 x 333: w = 400, h = 166; centre = (200, 83, 600, 249)
    assert crop_boxes(801, 333, [4]) == [(200, 83, 600, 249)]


def test_small_images_give_the_whole_image():
    assert crop_boxes(99, 500, range(9)) == [(0, 0, 99, 500)] * 9
    assert crop_boxes(500, 80, [3]) == [(0, 0, 500, 80)]


def test_out_of_range_crop_id():
    with pytest.raises(ValueError, match="out of range"):
        crop_boxes(500, 500, [9])


def test_cut_crops_from_original():
    img = Image.new("RGB", (400, 200))
    img.putpixel((399, 199), (255, 0, 0))
    (crop,) = cut_crops(img, [3])
    assert crop.size == (200, 100) and crop.getpixel((199, 99)) == (255, 0, 0)


def test_low_res_view_halves_both_sides():
    assert low_res_view(Image.new("RGB", (1000, 601))).size == (500, 300)  # round(300.5) = 300
    assert low_res_view(Image.new("RGB", (1000, 600)), scale=0.25).size == (250, 150)


def test_rtr_paper_formula():
    # no crop: (500*300) / (1000*600) = 0.25
    assert retained_token_ratio(1000, 600, []) == pytest.approx(0.25)
    # one quadrant: (500*300 + 500*300) / 600000 = 0.5; one half: (1000*300 + 150000) / 600000 = 0.75
    assert retained_token_ratio(1000, 600, [0]) == pytest.approx(0.5)
    assert retained_token_ratio(1000, 600, [5]) == pytest.approx(0.75)
    # two crops: 0.5 + 0.75 = 1.25
    assert retained_token_ratio(1000, 600, [0, 5]) == pytest.approx(1.25)


def test_boxes_to_crops_smallest_cover():
    # a box inside the top-left quadrant -> 0; one straddling the centre -> 4 (centre, 500x300)
    assert boxes_to_crops(1000, 600, [[10, 10, 50, 50]]) == [0]
    assert boxes_to_crops(1000, 600, [[400, 200, 600, 400]]) == [4]
    # spans the full top width: only crop 5 (top half) covers it
    assert boxes_to_crops(1000, 600, [[100, 10, 900, 100]]) == [5]
    # two boxes in opposite quadrants -> both quadrants, sorted
    assert boxes_to_crops(1000, 600, [[900, 500, 990, 590], [10, 10, 20, 20]]) == [0, 3]


def test_boxes_to_crops_fallback_and_max_iou():
    # the whole image: no crop covers it -> highest IoU: halves have IoU 0.5 > quadrants 0.25 -> 5
    assert boxes_to_crops(1000, 600, [[0, 0, 1000, 600]]) == [5]
    # max-iou: a box equal to the top-left quadrant -> 0 (IoU 1)
    assert boxes_to_crops(1000, 600, [[0, 0, 500, 300]], rule="max-iou") == [0]
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_boxes_to_crops_bad_input():
    with pytest.raises(ValueError, match="not a valid"):
        boxes_to_crops(100, 100, [[5, 5, 1, 1]])
    with pytest.raises(ValueError, match="unknown box-to-crop rule"):
        boxes_to_crops(100, 100, [[0, 0, 1, 1]], rule="nearest")
