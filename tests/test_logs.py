from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

import pytest

from webhook import logs
from webhook.logs import JsonFormatter, LoopBatchingHandler, TextFormatter


class CountingStream(io.StringIO):
    """A StringIO that counts its writes."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def logger_with(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger("test.logs")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_lines_in_one_loop_turn_are_written_together_in_order() -> None:
    stream = CountingStream()
    handler = LoopBatchingHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logger_with(handler)

    async def burst() -> None:
        for i in range(50):
            log.info("pod reviewed", extra={"n": i})
        assert stream.writes == 0  # held until the turn ends
        await asyncio.sleep(0)

    asyncio.run(burst())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["n"] for entry in lines] == list(range(50))
    assert stream.writes == 1
    assert lines[0]["msg"] == "pod reviewed"
    assert lines[0]["time"].endswith("Z")


def test_outside_a_loop_lines_are_written_at_once() -> None:
    stream = CountingStream()
    log = logger_with(LoopBatchingHandler(stream))
    log.info("starting")
    assert stream.getvalue() == "starting\n"


def test_text_format_shows_fields() -> None:
    stream = io.StringIO()
    handler = LoopBatchingHandler(stream)
    handler.setFormatter(TextFormatter())
    logger_with(handler).info("pod mutated", extra={"pod": "ns/web-*", "reason": None})
    assert stream.getvalue() == "info    pod mutated pod=ns/web-*\n"


def test_info_json_merges_a_cached_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.setup("info", "json")
        logs.info_json(logs.get("admission"), "pod mutated", {"pod": "ns/web-*"},
                       b'{"outcome":"patched","warnings":[]}')
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    entry = json.loads(stream.getvalue())
    assert {k: entry[k] for k in ("level", "logger", "msg", "pod", "outcome", "warnings")} == {
        "level": "info", "logger": "concurrency_injector.admission", "msg": "pod mutated",
        "pod": "ns/web-*", "outcome": "patched", "warnings": [],
    }
