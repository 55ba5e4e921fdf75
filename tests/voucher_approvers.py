"""One platform process approving voucher applications, each on its own connection in its own
thread, all released at once: run twice at the same time by tests/test_voucher_concurrency.py.

    python voucher_approvers.py DATABASE_URL KEY_ID GO_FILE APPLICATION_ID...

Prints one JSON line per application: its id and the face value issued, or the refusal.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import date
from pathlib import Path

import psycopg

from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.errors import JinsuanError
from rewards.vouchers.issuing import approve

ISSUE_DAY = date(2026, 3, 1)


def main() -> None:
    url, key_id, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    applications = [int(a) for a in sys.argv[4:]]
    checker = Principal(key_id, Role.BUREAU)
    connections = [psycopg.connect(url, autocommit=True) for _ in applications]
    results: list[dict[str, object]] = []
    ready = threading.Barrier(len(applications) + 1)

    def one(conn: psycopg.Connection, application: int) -> None:
        ready.wait()
        try:
            issued = approve(conn, checker, application, on=ISSUE_DAY)
            results.append({"application": application, "face_value": str(issued.face_value)})
        except JinsuanError as exc:
            results.append({"application": application, "refused": exc.reason})

    threads = [threading.Thread(target=one, args=pair)
               for pair in zip(connections, applications, strict=True)]
    for thread in threads:
        thread.start()
    while not go.exists():  # both processes are released by one file, at the same moment
        time.sleep(0.005)
    ready.wait()
    for thread in threads:
        thread.join()
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
