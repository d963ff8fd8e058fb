"""What a request to the served model may carry, read without Ray: one image as the raw body, a
multipart upload of one or many image files, or JSON `{"images": [BASE64, ...]}` (or `{"image":
BASE64}`). A malformed request is a `BadRequest` whose message names the part, field or image at
fault; the server answers it with HTTP 400 and `{"error": message}`."""

from __future__ import annotations

import base64
import binascii
import json
from email.parser import BytesParser
from email.policy import HTTP

from mtl_ray.config import ServeConfig

MAX_BODY_BYTES = int(ServeConfig.model_fields["max_body_mb"].default * 2**20)
MAX_IMAGES = 256
"""Images one request may carry; more belong in `mtl-ray score`."""


class BadRequest(ValueError):
    """A request the server cannot answer: HTTP 400 with this one line."""


def images_of(body: bytes, content_type: str, max_body_bytes: int = MAX_BODY_BYTES) -> list[bytes]:
    """The encoded images a request body carries, in order."""
    if len(body) > max_body_bytes:
        raise BadRequest(f"the body is {len(body):,} bytes; the limit is {max_body_bytes:,}")
    if not body:
        raise BadRequest('the body is empty: send an image, a multipart upload or JSON {"images": [BASE64, ...]}')
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        images = _multipart(body, content_type)
    elif kind == "application/json":
        images = _json(body)
    else:
        images = [body]
    if not images:
        raise BadRequest("the request holds no image")
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"{len(images)} images in one request; at most {MAX_IMAGES} (use mtl-ray score for more)")
    return images


def _multipart(body: bytes, content_type: str) -> list[bytes]:
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise BadRequest("multipart/form-data without a readable boundary")
    return [part.get_payload(decode=True) or b"" for part in message.iter_parts()]


def _json(body: bytes) -> list[bytes]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if isinstance(doc, dict) and isinstance(doc.get("image"), str):
        doc = {"images": [doc["image"]]}
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise BadRequest('expected JSON {"images": [BASE64, ...]} or {"image": BASE64}')
    images = []
    for i, text in enumerate(doc["images"]):
        if not isinstance(text, str):
            raise BadRequest(f"images[{i}]: expected a base64 string, got {type(text).__name__}")
        try:
            images.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"images[{i}]: not base64") from None
    return images
