"""img2dataset's resize modes and encodings, and mode conversions to RGB."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tasks.imaging.resize import ImageError, ResizeParams, process_image, sniff
from tests.crawl import images


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("no", (400, 100), (400, 100)),
        ("border", (400, 100), (64, 64)),
        ("keep_ratio", (400, 100), (256, 64)),
        ("keep_ratio_largest", (400, 100), (64, 16)),
        ("center_crop", (400, 100), (64, 64)),
        ("border", (30, 20), (64, 64)),
    ],
)
def test_resize_modes(mode, size, expected):
    body = images.encode(Image.new("RGB", size, (9, 9, 9)), "PNG")
    out = process_image(body, ResizeParams(image_size=64, resize_mode=mode))
    assert (out.width, out.height) == expected
    assert (out.original_width, out.original_height) == size
    assert Image.open(io.BytesIO(out.data)).size == expected


def test_border_pads_white_and_centers():
    body = images.encode(Image.new("RGB", (400, 100), (0, 0, 0)), "PNG")
    img = Image.open(
        io.BytesIO(process_image(body, ResizeParams(image_size=64, encode_format="png")).data)
    )
    assert img.getpixel((32, 2)) == (255, 255, 255) and img.getpixel((32, 32)) == (0, 0, 0)


def test_resize_only_if_bigger():
    body = images.encode(Image.new("RGB", (30, 20)), "PNG")
    out = process_image(
        body, ResizeParams(image_size=64, resize_mode="keep_ratio", resize_only_if_bigger=True)
    )
    assert (out.width, out.height) == (30, 20)


@pytest.mark.parametrize(("fmt", "pil"), [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encodings(fmt, pil):
    out = process_image(
        images.jpeg(), ResizeParams(image_size=32, encode_format=fmt, encode_quality=80)
    )
    assert Image.open(io.BytesIO(out.data)).format == pil


@pytest.mark.parametrize(
    "maker",
    [images.cmyk_jpeg, images.palette_png, images.png16, images.png_rgba, images.animated_gif],
)
def test_modes_become_rgb(maker):
    out = process_image(maker(), ResizeParams(image_size=32, encode_format="png"))
    assert Image.open(io.BytesIO(out.data)).mode == "RGB"


def test_sixteen_bit_is_scaled_not_clipped():
    out = process_image(
        images.png16(), ResizeParams(image_size=32, encode_format="png", resize_mode="no")
    )
    value = Image.open(io.BytesIO(out.data)).getpixel((0, 0))[0]
    assert 150 <= value <= 160  # 40000 / 65535 * 255 = 155.6


def test_alpha_flattened_on_white():
    out = process_image(images.png_rgba(), ResizeParams(resize_mode="no", encode_format="png"))
    img = Image.open(io.BytesIO(out.data))
    assert img.getpixel((60, 10)) == (255, 255, 255) and img.getpixel((5, 10)) == (0, 0, 255)


def test_animated_first_frame():
    out = process_image(images.animated_gif(), ResizeParams(resize_mode="no", encode_format="png"))
    assert Image.open(io.BytesIO(out.data)).getpixel((5, 5)) == (255, 0, 0)


def test_big_jpeg_uses_draft_and_keeps_original_size():
    out = process_image(images.jpeg(4000, 3000), ResizeParams(image_size=256))
    assert (out.original_width, out.original_height, out.width, out.height) == (
        4000,
        3000,
        256,
        256,
    )


@pytest.mark.parametrize(
    ("body", "cls"),
    [
        (b"", "not_an_image"),
        (b"<html>", "not_an_image"),
        (images.jpeg()[:200], "decode_error"),
        (images.bomb_png(20000), "decompression_bomb"),
        (b'<?xml version="1.0"?><svg xmlns="x"/>', "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "decode_error"),
    ],
)
def test_refusals(body, cls):
    with pytest.raises(ImageError) as info:
        process_image(body, ResizeParams(max_image_pixels=100_000_000))
    assert info.value.error_class == cls


def test_min_size_and_sniff():
    with pytest.raises(ImageError, match="image_too_small"):
        process_image(images.jpeg(10, 10), ResizeParams(min_image_size=20))
    assert (
        sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
        and sniff(b"RIFX\x00\x00\x00\x00WEBP") is None
    )


def test_img2dataset_area_and_aspect_limits():
    """max_image_area and max_aspect_ratio as img2dataset applies them: on the original size,
    strictly above the limit refused, at the limit kept; 0 switches each check off."""
    with pytest.raises(ImageError) as info:
        process_image(images.jpeg(40, 30), ResizeParams(max_image_area=1199))
    assert info.value.error_class == "image_too_large"
    assert process_image(images.jpeg(40, 30), ResizeParams(max_image_area=1200)).width == 256
    with pytest.raises(ImageError) as info:
        process_image(images.jpeg(90, 30), ResizeParams(max_aspect_ratio=2.9))
    assert info.value.error_class == "aspect_ratio"
    kept = process_image(images.jpeg(30, 90), ResizeParams(max_aspect_ratio=3.0))
    assert (kept.original_width, kept.original_height) == (30, 90)
    assert process_image(images.jpeg(300, 10), ResizeParams()).original_width == 300


def test_params_are_a_frozen_strict_picklable_section():
    import pickle

    import pydantic

    p = ResizeParams(image_size=64)
    with pytest.raises(pydantic.ValidationError):
        ResizeParams(image_sise=64)  # a typo is refused, not ignored
    with pytest.raises(pydantic.ValidationError):
        p.image_size = 128  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        ResizeParams(resize_mode="stretch")
    assert pickle.loads(pickle.dumps(p)) == p and hash(p) == hash(ResizeParams(image_size=64))


def test_image_errors_refuse_unknown_classes():
    with pytest.raises(ValueError, match="unknown image error class"):
        ImageError("timeout")
