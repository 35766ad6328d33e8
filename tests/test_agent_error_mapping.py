"""The agent's two error boundaries, each one mapping in edge_agent/errors.py: codes on the local API (an
error reply round-trips to the same exception type in the client) and the CLI's exit status."""

from __future__ import annotations

import pytest

from tandem.edge_agent.errors import (
    ERRORS_BY_CODE,
    AgentError,
    BadRequestError,
    ConfigError,
    ModelLoadError,
    OverloadedError,
    exit_code,
    reply_code,
)


@pytest.mark.parametrize("cls", sorted(set(ERRORS_BY_CODE.values()), key=lambda c: c.__name__))
def test_each_error_crosses_the_local_api_as_its_own_type(cls):
    code, message = reply_code(cls("what went wrong"))
    assert (code, message) == (cls.code, "what went wrong")
    assert ERRORS_BY_CODE[code] is cls


def test_anything_else_is_an_internal_error_that_says_what_it_was():
    code, message = reply_code(KeyError("outputs"))
    assert code == "internal" and message == "internal error: KeyError: 'outputs'"
    assert ERRORS_BY_CODE[code] is AgentError


@pytest.mark.parametrize(
    "exc,status",
    [(ConfigError("policy.kind: ..."), 2), (ModelLoadError("no manifest"), 2), (BadRequestError("x"), 1)]
    + [(OverloadedError("busy"), 1)],
)
def test_the_cli_exits_2_only_when_the_agent_cannot_start_as_configured(exc, status):
    assert exit_code(exc) == status
