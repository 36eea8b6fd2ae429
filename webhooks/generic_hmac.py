"""Any sender: ``X-Signature: sha256=<hex HMAC-SHA256>``, body ``{"repository": URL, "ref": "refs/heads/B"}``."""

from __future__ import annotations

from collections.abc import Mapping

from webhooks.base import Delivery, Rejected, check_hmac, header, json_body, text


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_hmac(header(headers, "X-Signature"), secret, body, prefix="sha256=", name="X-Signature")
    data = json_body(body)
    repository, ref = text(data, "repository"), text(data, "ref")
    if not repository or not ref:
        raise Rejected(400, 'the body must be {"repository": URL, "ref": "refs/heads/BRANCH"}')
    return Delivery("push", header(headers, "X-Delivery-Id"), ref, text(data, "after"), (repository,))
