"""A sending process of its own, for the concurrent senders part:

    python proof_sender.py RUN_DIR NAME COUNT [--now]

Sends COUNT evals `seen.append((NAME, n))`, n = 0..COUNT-1, in order, as fast as it can (with a little jitter), each
with a time from its own `protocol.Clock`; prints their ids as one JSON list at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from bidviz import protocol
from bidviz.channel import Mailbox

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("name")
p.add_argument("count", type=int)
p.add_argument("--now", action="store_true")
a = p.parse_args()

clock = protocol.Clock()
mailbox = Mailbox(a.run_dir)
rng = random.Random(a.name)
ids = []
for n in range(a.count):
    code = f"seen.append(({a.name!r}, {n}))"
    command = protocol.make_command("eval", {"code": code, "now": a.now}, sender=f"proof:{a.name}", clock=clock)
    ids.append(mailbox.send(command))
    if rng.random() < 0.3:
        time.sleep(rng.uniform(0, 0.004))
print(json.dumps(ids), flush=True)
