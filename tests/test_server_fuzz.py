"""Schemathesis fuzz of the OpenAPI schema (benchmarks/fuzz.py): at least 500 generated
requests, valid and invalid, over every operation, about a third of the bodies carrying
unpaired surrogates, NUL or noncharacters in a string; zero 5xx, every error a coded body."""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="the fuzz test needs the dev extra (schemathesis)")
pytest.importorskip("fastapi", reason="the server tests need the serve extra")

from fastapi.testclient import TestClient  # noqa: E402

from benchmarks.fuzz import HOSTILE_TEXT, fuzz, fuzz_app, summary  # noqa: E402


def test_fuzz_500_requests_no_5xx():
    app = fuzz_app()
    hostile = {"surrogate": 0, "NUL": 0}

    def check(case, response):
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"] and error["message"] and "\n" not in error["message"]
        body = repr(case.body)
        hostile["surrogate"] += "\\ud800" in body or "\\udfff" in body
        hostile["NUL"] += "\\x00" in body
        if any(ascii(p)[1:-1] in body for p in HOSTILE_TEXT):
            assert response.status_code in (400, 404, 413, 422), (case.path, case.body, response.text)

    with TestClient(app):
        counts = fuzz(app, per_operation=45, on_response=check)
    result = summary(counts)
    print(result["by_status"], result["requests"], result["by_operation"], hostile)
    assert result["server_errors"] == 0
    assert result["requests"] >= 500
    assert {"200", "400", "422"} <= set(result["by_status"])  # valid and invalid requests both reached
    assert min(hostile.values()) >= 12, hostile  # surrogates and NUL reached the server
