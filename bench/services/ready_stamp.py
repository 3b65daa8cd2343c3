#!/usr/bin/env python3
"""Bench service for gate latency: waits a random 0-40 ms, prints ``ready <time.time()>`` (the wall
clock at the moment it writes its ready line), then sleeps until SIGTERM.

    python3 ready_stamp.py STATE_DIR     (STATE_DIR only makes the command line unique per host)

The random delay spreads the ready line over the agent's 20 ms gate-polling phase, so the median
latency is not an artefact of a fixed start-up time lining up with the poll. Stdlib only.
"""

import random
import signal
import sys
import time

stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
time.sleep(random.uniform(0.0, 0.04))
sys.stdout.write(f"ready {time.time():.6f}\n")
sys.stdout.flush()
while not stop:
    time.sleep(0.2)
