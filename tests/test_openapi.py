"""The OpenAPI document: valid, exactly the routes served, and a bounded schemathesis run against a daemon."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from twisted.internet.task import Clock

from numd.http.api import LEGACY_PATHS, NumdApi
from numd.service import NumberService

from .test_api_end_to_end import running_api_daemon

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def packaged_document() -> dict[str, Any]:
    """numd/http/openapi.json as shipped in the package."""
    return json.loads(resources.files("numd.http").joinpath("openapi.json").read_text("utf-8"))  # type: ignore[no-any-return]


def served_routes() -> dict[str, set[str]]:
    """Every Klein route of NumdApi as an OpenAPI path and its methods (HEAD is implicit)."""
    routes: dict[str, set[str]] = {}
    for rule in NumdApi.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods or () if m != "HEAD")
    return routes


def test_document_is_valid_openapi_3() -> None:
    """The packaged document passes openapi-spec-validator."""
    document = packaged_document()
    assert document["openapi"].startswith("3.")
    validate(document)  # raises on any violation


def test_document_describes_exactly_the_routes_served() -> None:
    """Each route and method the API serves is in the document, and nothing else is."""
    documented = {
        path: {method for method in item if method in HTTP_METHODS}
        for path, item in packaged_document()["paths"].items()
    }
    assert documented == served_routes()


def test_path_parameters_match_the_routes() -> None:
    """Every {parameter} in a documented path is declared, required, as an integer."""
    for path, item in packaged_document()["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method in HTTP_METHODS & set(item):
            declared = {
                p["name"]: p for p in item[method].get("parameters", []) if p["in"] == "path"
            }
            assert set(declared) == names, (path, method)
            assert all(
                p["required"] and p["schema"]["type"] == "integer" for p in declared.values()
            )


def test_only_served_legacy_paths_are_listed() -> None:
    """The served document drops the legacy paths unless they are on; both versions stay valid."""
    for legacy_routes in (False, True):
        api = NumdApi(NumberService(Clock()), legacy_routes=legacy_routes)
        document = json.loads(api._openapi)
        validate(document)
        assert (LEGACY_PATHS <= set(document["paths"])) is legacy_routes
        assert not (LEGACY_PATHS & set(document["paths"])) or legacy_routes
    flagged = {p for p, item in packaged_document()["paths"].items() if item.get("x-numd-legacy")}
    assert flagged == LEGACY_PATHS


@pytest.mark.timeout(90)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tmp_path: Path,
) -> None:
    """A bounded schemathesis run (all checks, all phases) against a real daemon finds nothing."""
    with running_api_daemon(tmp_path) as daemon:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{daemon.base}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--request-timeout",
                "5",
                "--no-color",
            ],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert re.search(r"\d+ generated, \d+ passed", output), output
        assert "failed" not in output.split("SUMMARY")[-1], output
        log = daemon.daemon.output.read_text()
        assert "Traceback" not in log and "unexpected error" not in log


def test_every_operation_lists_what_the_guard_answers() -> None:
    """403 (Host), 408 (slow request) and 413 (body too large) everywhere; 401 exactly where a token is needed."""
    from numd.http.api import LEGACY_STATE_CHANGING_PATHS, STATE_CHANGING_METHODS

    for path, item in packaged_document()["paths"].items():
        for method in HTTP_METHODS & set(item):
            responses = item[method]["responses"]
            assert {"403", "408", "413"} <= set(responses), (path, method)
            needs_token = (
                method.upper().encode() in STATE_CHANGING_METHODS
                or path.encode() in LEGACY_STATE_CHANGING_PATHS
            )
            assert ("401" in responses) == needs_token, (path, method)


def test_every_operation_lists_the_bad_host_400() -> None:
    """Every operation may answer 400 bad-host (a repeated or malformed Host), and the document says so."""
    for path, item in packaged_document()["paths"].items():
        for method in HTTP_METHODS & set(item):
            answer = item[method]["responses"].get("400", {})
            text = answer.get("description", "") + answer.get("$ref", "")
            assert "BadHost" in text or "bad-host" in text, (path, method)
