"""``python -m controller`` is the ``nixgitops`` command."""

from __future__ import annotations

from controller.cli import main

raise SystemExit(main())
