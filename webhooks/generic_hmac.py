"""Any sender: ``X-Signature: sha256=<hex HMAC-SHA256>``, body ``{"repository": URL, "ref": "refs/heads/B"}``.

An optional ``"after"`` of all zeros says the push deleted the ref (then nothing is reconciled).
"""

from __future__ import annotations

from collections.abc import Mapping

from webhooks.base import PUSH, Delivery, Rejected, check_hmac, header, is_zero, json_body, text


def receive(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    check_hmac(header(headers, "X-Signature"), secret, body, prefix="sha256=", name="X-Signature")
    data = json_body(body)
    repository, ref, after = text(data, "repository"), text(data, "ref"), text(data, "after")
    if not repository or not ref:
        raise Rejected(400, 'the body must be {"repository": URL, "ref": "refs/heads/BRANCH"}')
    deleted = (ref,) if is_zero(after) else ()
    return Delivery(PUSH, header(headers, "X-Delivery-Id"), ref, after, (repository,), deleted=deleted)
