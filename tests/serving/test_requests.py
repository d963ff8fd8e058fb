"""What a request to `mtl-ray serve` may carry, and the score/serve options, without Ray."""

import base64
import json
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart

import pytest

from mtl_ray.config import ServeConfig, parse
from mtl_ray.errors import UserError
from mtl_ray.serving.http import MAX_IMAGES, BadRequest, images_of

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 40


def multipart(*files: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body as an HTTP client writes one, and its Content-Type."""
    form = MIMEMultipart("form-data")
    for i, data in enumerate(files):
        part = MIMEApplication(data, "octet-stream")
        part.add_header("Content-Disposition", "form-data", name="image", filename=f"{i}.png")
        form.attach(part)
    text = form.as_bytes()
    head, _, body = text.partition(b"\n\n")
    return body.replace(b"\n", b"\r\n"), form["Content-Type"]


def test_a_raw_body_is_one_image():
    assert images_of(PNG, "image/png") == [PNG]
    assert images_of(PNG, "") == [PNG]


def test_multipart_carries_every_file_in_order():
    body, content_type = multipart(PNG, PNG[::-1], b"third")
    assert images_of(body, content_type) == [PNG, PNG[::-1], b"third"]


def test_json_carries_base64_images_in_order():
    encoded = [base64.b64encode(x).decode() for x in (PNG, b"two")]
    assert images_of(json.dumps({"images": encoded}).encode(), "application/json") == [PNG, b"two"]
    assert images_of(json.dumps({"image": encoded[0]}).encode(), "application/json; charset=utf-8") == [PNG]


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b"", "image/png", "the body is empty"),
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"pictures": []}', "application/json", 'expected JSON {"images"'),
        (b'{"images": ["@@@"]}', "application/json", "images[0]: not base64"),
        (b'{"images": [3]}', "application/json", "images[0]: expected a base64 string, got int"),
        (b'{"images": []}', "application/json", "the request holds no image"),
        (b"x" * 2048, "image/png", "the body is 2,048 bytes; the limit is 1,024"),
    ],
)
def test_a_bad_request_is_one_line_naming_what_is_wrong(body, content_type, message):
    with pytest.raises(BadRequest) as caught:
        images_of(body, content_type, max_body_bytes=1024)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_too_many_images_point_to_score():
    body = json.dumps({"images": [base64.b64encode(b"a").decode()] * (MAX_IMAGES + 1)}).encode()
    with pytest.raises(BadRequest, match="use mtl-ray score"):
        images_of(body, "application/json")


def test_serve_options_name_a_bad_key_and_value():
    with pytest.raises(UserError, match="unknown key 'replicas'"):
        parse(ServeConfig, {"model": "m", "replicas": 2}, "serve.yaml")
    with pytest.raises(UserError, match="key 'watch_s'"):
        parse(ServeConfig, {"model": "m", "watch_s": -1}, "serve.yaml")
    assert parse(ServeConfig, {"model": "models:/m@champion"}, "x").max_batch_size >= 1


def test_score_concurrency_is_n_or_min_max():
    from mtl_ray.serving.score import _concurrency

    assert _concurrency("3") == (3, 3) and _concurrency("1-4") == (1, 4) and _concurrency(None) is None
    for bad in ("0", "4-2", "x", "2-"):
        with pytest.raises(UserError, match=f"--concurrency {bad}: expected N or MIN-MAX"):
            _concurrency(bad)
