"""Solo inline runs: a model too big for inline_max_us runs on the I/O loop while clients come alone.

A lone client has nobody to batch with, so the two thread hand-offs to and from the
batcher's worker are pure cost; with company the worker must take over again so
requests batch. The PP-OCR orientation classifier (about 1 ms here) is the model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from agent_fixtures import make_model_dir
from tandem.edge_agent.agent import Agent
from tandem.edge_agent.client import AgentClient, AsyncAgentClient
from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.server import Concurrency, ZmqServer


@pytest.fixture(scope="module")
def ocr_dir(ocr_cls_model, tmp_path_factory) -> Path:
    return make_model_dir(ocr_cls_model, tmp_path_factory.mktemp("ocr") / "model", name="ocr-cls")


def _config(model_dir: Path, run: Path, overrides: dict | None = None) -> AgentConfig:
    return AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "server.endpoint": f"ipc://{run}/agent.sock",
            "hard_examples.data_dir": run / "data",
            "policy.threshold": 0.0,
            "batch.window_us": 2000,
            "batch.max_batch": 8,
            **(overrides or {}),
        }
    )


def _serial(agent: Agent, xs: list[np.ndarray]) -> list:
    with AgentClient(agent.endpoint, timeout_s=30) as client:
        return [client.infer(x) for x in xs]


def test_a_lone_client_runs_a_1ms_model_inline_with_the_same_answers(ocr_dir, tmp_path):
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 3, 48, 192), dtype=np.float32) for _ in range(12)]
    with Agent(_config(ocr_dir, tmp_path)) as agent:
        inline = _serial(agent, xs)
        stats = agent.batcher.stats()
        run_s = agent.batcher.run_ewma_s
        assert run_s is not None and run_s > agent.config.batch.inline_max_us / 1e6, (
            "the model must be above inline_max_us"
        )
    with Agent(_config(ocr_dir, tmp_path / "worker", {"batch.solo_inline_max_us": 0})) as agent:
        worker = _serial(agent, xs)
        worker_stats = agent.batcher.stats()
    # all but the first (no runtime estimate yet) and any that found the worker still releasing its lock
    assert stats.inline >= len(xs) * 2 // 3, stats
    assert worker_stats.inline == 0
    assert [a.labels for a in inline] == [a.labels for a in worker]
    np.testing.assert_allclose([a.confidence for a in inline], [a.confidence for a in worker], rtol=1e-6)


def test_concurrent_clients_go_back_to_the_worker_and_batch(ocr_dir, tmp_path):
    rng = np.random.default_rng(1)
    xs = [rng.random((1, 3, 48, 192), dtype=np.float32) for _ in range(48)]

    async def burst(endpoint: str) -> list:
        clients = [AsyncAgentClient(endpoint, timeout_s=30) for _ in range(8)]
        try:
            return await asyncio.gather(*[clients[i % 8].infer(x) for i, x in enumerate(xs)])
        finally:
            for c in clients:
                await c.close()

    with Agent(_config(ocr_dir, tmp_path)) as agent:
        _serial(agent, xs[:3])  # alone first: inline
        before = agent.batcher.stats()
        answers = asyncio.run(burst(agent.endpoint))
        after = agent.batcher.stats()
        overlapped = not agent.concurrency.alone
    assert len(answers) == len(xs)
    assert overlapped
    batched = {size: n - before.batch_sizes.get(size, 0) for size, n in after.batch_sizes.items()}
    assert max(size for size, n in batched.items() if n > 0) > 1, batched
    assert after.inline - before.inline < len(xs) // 2, (before, after)


def test_the_server_tells_lone_requests_from_overlapping_ones(tmp_path):
    concurrency = Concurrency(memory=8)

    def slow_echo(frames):
        time.sleep(0.005)  # long enough for a second client's request to queue behind
        return [bytes(f) for f in frames]  # bytes (the header) or zmq.Frame (tensors)

    server = ZmqServer(f"ipc://{tmp_path}/c.sock", slow_echo, concurrency=concurrency).start()
    try:

        def client(count: int) -> None:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(server.endpoint)
            for i in range(count):
                sock.send(b"%d" % i)
                sock.recv()
            sock.close(0)

        client(10)
        assert concurrency.alone  # one client, one request at a time
        threads = [threading.Thread(target=client, args=(10,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not concurrency.alone
        client(8)  # alone again for `memory` requests: the overlap is forgotten
        assert concurrency.alone
    finally:
        server.stop()
