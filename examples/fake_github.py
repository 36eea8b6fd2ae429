"""A fake GitHub API on loopback for `make demo` (tests/fakeforge.py: it checks each request against GitHub's
documented API and keeps what it is sent). Not GitHub: the demo has no network.

    python fake_github.py PORT OWNER/REPO TOKEN_FILE     # serves until SIGTERM; prints "ready" once listening
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakeforge import FakeGitHub


def main() -> None:
    port, repository, token_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    forge = FakeGitHub(repository=repository, token=token_file.read_text().strip(), prefix="")
    # the demo's pull request #1 may be commented on (its head comes from the webhook; the fake lists it as closed,
    # so that polls do not preview it before the demo pushes its head)
    forge.add_pull_request(1, "0" * 40, head_branch="more-greetings", state="closed")
    forge.start(port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    forge.stop()


if __name__ == "__main__":
    main()
