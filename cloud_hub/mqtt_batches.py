"""Manual-ack MQTT ingestion's two shared steps: gather a batch from the paho queue, ack it after commit.

Telemetry windows and hard examples both follow the same rule: paho's thread only queues
(generation, mid, topic, payload, qos); a writer thread takes a batch, commits it, and only
then acks, so a crash between receipt and commit makes the broker redeliver. Acks for an
older connection's mids are skipped (a reconnect renumbers them; the broker redelivers).
"""

from __future__ import annotations

import queue
import time
from typing import Any

Received = tuple[int, int, str, bytes, int]  # (connection generation, mid, topic, payload, qos)


def take_batch(
    inbox: "queue.SimpleQueue[Received] | queue.Queue[Received]",
    batch_max: int,
    batch_wait_s: float,
    first_wait_s: float = 0.2,
) -> list[Received]:
    """Up to `batch_max` messages: wait `first_wait_s` for one, then at most `batch_wait_s` for more."""
    try:
        first = inbox.get(timeout=first_wait_s)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + batch_wait_s
    while len(batch) < batch_max:
        remaining = deadline - time.monotonic()
        try:
            batch.append(inbox.get(timeout=remaining) if remaining > 0 else inbox.get_nowait())
        except queue.Empty:
            break
    return batch


def ack_batch(client: Any, batch: list[Received], generation: int) -> None:
    """Ack a committed batch's QoS>0 messages received on the current connection."""
    for gen, mid, _, _, qos in batch:
        if qos > 0 and gen == generation:
            client.ack(mid, qos)
