"""Webhook receivers: verify a forge's push notification and turn it into a "source changed" event.

One module per forge arrives with the HTTP server (see docs/architecture.md); this package holds the shared
contract in the meantime.
"""

from __future__ import annotations
