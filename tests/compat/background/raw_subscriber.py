"""A task worker that receives one run and never acknowledges it (it is killed before):
`python -m tests.compat.background.raw_subscriber <api-url>` prints the run's id.
"""

from __future__ import annotations

import json
import sys
import time

from websockets.sync.client import connect

from tests.compat.background.tasks import add

if __name__ == "__main__":
    url = sys.argv[1].replace("http", "ws", 1) + "/task_runs/subscriptions/scheduled"
    with connect(url, subprotocols=["prefect"]) as socket:  # type: ignore[list-item]
        socket.send(json.dumps({"type": "auth", "token": None}))
        socket.recv()
        socket.send(json.dumps({"type": "subscribe", "keys": [add.task_key], "client_id": "raw"}))
        run = json.loads(socket.recv())
        print(run["id"], flush=True)  # noqa: T201
        time.sleep(3600)
