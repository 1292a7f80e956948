import numpy as np
import pytest
from PIL import Image

from awares_rl.core.images import ImageError, load_image, to_rgb


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_odd_modes_become_rgb(tmp_path, mode):
    img = Image.new(mode, (120, 80))
    ext = "tiff" if mode in ("CMYK", "I;16") else "png"
    path = tmp_path / f"x.{ext}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (120, 80)


def test_rgba_transparent_composites_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_i16_rescaled():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    assert to_rgb(Image.fromarray(arr)).getpixel((0, 0)) == (255, 255, 255)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "none.png")


def test_empty_and_corrupt_and_truncated(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    Image.new("RGB", (300, 300), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("empty.png", "junk.png", "cut.png"):
        with pytest.raises(ImageError, match=name):
            load_image(tmp_path / name)


def test_decompression_bomb_refused(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 Mpx, a few KB on disk
    with pytest.raises(ImageError, match="decompression bomb refused"):
        load_image(tmp_path / "bomb.png")
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")  # 81 Mpx > our 64 Mpx default
    with pytest.raises(ImageError, match="exceeds max_pixels=64000000"):
        load_image(tmp_path / "big.png")


def test_extreme_aspect_ratio(tmp_path):
    Image.new("RGB", (5000, 10)).save(tmp_path / "strip.png")
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(tmp_path / "strip.png")
