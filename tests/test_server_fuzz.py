"""Schemathesis fuzz of the OpenAPI schema (benchmarks/fuzz.py): at least 1,000 generated
requests, valid and invalid, over every operation; zero 5xx, every error a coded body."""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="the fuzz test needs the dev extra (schemathesis)")
pytest.importorskip("fastapi", reason="the server tests need the serve extra")

from fastapi.testclient import TestClient  # noqa: E402

from benchmarks.fuzz import fuzz, fuzz_app, summary  # noqa: E402


def test_fuzz_1000_requests_no_5xx():
    app = fuzz_app()

    def check(case, response):
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["code"] and error["message"] and "\n" not in error["message"]

    with TestClient(app):
        counts = fuzz(app, per_operation=90, on_response=check)
    result = summary(counts)
    print(result["by_status"], result["requests"], result["by_operation"])
    assert result["server_errors"] == 0
    assert result["requests"] >= 1000
    assert {"200", "400", "422"} <= set(result["by_status"])  # valid and invalid requests both reached
