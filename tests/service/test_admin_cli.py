"""recsys-admin (service/admin_cli.py) against the real app: each command runs `main(argv)`
with a TestClient (an httpx.Client) in place of the network, and is checked by what the
service then does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import admin_cli
from service.settings import Settings
from tests import factories as f
from tests.conftest import ADMIN_TOKEN

URL = "http://testserver"  # TestClient's host; any host reaches the app


@pytest.fixture(autouse=True)
def no_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell must not choose the server or the token."""
    monkeypatch.delenv(admin_cli.URL_ENV, raising=False)
    monkeypatch.delenv(admin_cli.TOKEN_ENV, raising=False)


class Cli:
    """Runs recsys-admin against `client`; keeps the last exit code, stdout and stderr."""

    def __init__(self, client: httpx.Client, capsys: pytest.CaptureFixture[str]) -> None:
        self.client = client
        self.capsys = capsys

    def __call__(self, *argv: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str, str]:
        auth = ["--token", token] if token is not None else []
        code = admin_cli.main(["--url", URL, *auth, *argv], client=self.client)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self("--json", *argv)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(embedded_client: TestClient, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(embedded_client, capsys)


@pytest.fixture
def v2_file(tmp_path: Path, v2_archive: bytes) -> Path:
    path = tmp_path / "v2.tar.gz"
    path.write_bytes(v2_archive)
    return path


def test_push_then_list_shows_the_version_installed_but_not_active(
    cli: Cli, embedded_client, v2_file
):
    code, out, _ = cli("push", str(v2_file))
    assert code == 0
    assert out.startswith("installed v2 (")
    assert f.answered_version(embedded_client) == "v1"

    code, out, _ = cli("list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["VERSION", "ACTIVE", "CREATED", "ITEMS", "NDCG@10", "ERROR"]
    by_version = {row.split()[0]: row.split() for row in rows}
    assert set(by_version) == {"v1", "v2"}
    assert by_version["v1"][1] == "*" and by_version["v2"][1] != "*"

    listed = cli.json("list")
    assert listed["active"] == "v1"
    assert {v["version"] for v in listed["versions"]} == {"v1", "v2"}


def test_push_with_activate_switches_the_answering_version(cli: Cli, embedded_client, v2_file):
    body = cli.json("push", str(v2_file), "--activate")
    assert body["installed"]["version"] == "v2"
    assert body["activated"]["version"] == "v2"
    assert f.answered_version(embedded_client) == "v2"


def test_activate_and_rollback_change_the_answering_version(cli: Cli, embedded_client, v2_file):
    cli("push", str(v2_file))
    code, out, _ = cli("activate", "v2")
    assert (code, out) == (0, "active version: v2\n")
    assert f.answered_version(embedded_client) == "v2"

    code, out, _ = cli("rollback")
    assert (code, out) == (0, "rolled back; active version: v1\n")
    assert f.answered_version(embedded_client) == "v1"


def test_canary_then_promote(cli: Cli, embedded_client, v2_file):
    cli("push", str(v2_file))
    code, out, _ = cli("activate", "v2", "--canary", "50")
    assert code == 0
    assert "v2 (50%)" in out.splitlines()[1]
    versions = {f.answered_version(embedded_client, f"user-{i}") for i in range(40)}
    assert versions == {"v1", "v2"}  # half of the users each, sticky by user_id

    status = cli.json("promote")
    assert (status["serving"], status["canary"]) == ("v2", None)
    assert {f.answered_version(embedded_client, f"user-{i}") for i in range(40)} == {"v2"}


def test_push_as_a_canary_then_abort(cli: Cli, embedded_client, v2_file):
    body = cli.json("push", str(v2_file), "--canary", "10")
    assert (body["activated"]["serving"], body["activated"]["canary"]) == ("v1", "v2")
    code, out, _ = cli("abort")
    assert code == 0
    _, row = out.splitlines()
    assert row.split()[2:4] == ["v1", "-"]  # SERVING v1, no CANARY
    assert f.answered_version(embedded_client, "user-1") == "v1"


def test_status_of_one_server(cli: Cli):
    code, out, _ = cli("status")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["URL", "REPLICA", "SERVING", "CANARY", "FLEET_ACTIVE", "ERROR"]
    assert row.split()[0] == URL and row.split()[2:] == ["v1", "-", "v1", "-"]
    [body] = cli.json("status")
    assert body["url"] == URL and body["serving"] == "v1"


def test_flags_after_the_subcommand_and_from_the_environment(embedded_client, capsys, monkeypatch):
    argv = ["list", "--url", URL, "--token", ADMIN_TOKEN]
    assert admin_cli.main(argv, client=embedded_client) == 0
    assert "v1" in capsys.readouterr().out
    monkeypatch.setenv(admin_cli.URL_ENV, URL)
    monkeypatch.setenv(admin_cli.TOKEN_ENV, ADMIN_TOKEN)
    assert admin_cli.main(["--json", "list"], client=embedded_client) == 0
    assert json.loads(capsys.readouterr().out)["active"] == "v1"


# --- errors ----------------------------------------------------------------------------------


def test_without_a_token_it_says_how_to_set_one(cli: Cli):
    code, out, err = cli("list", token=None)
    assert (code, out) == (1, "")
    assert "no admin token: set RECSYS_ADMIN_TOKEN or --token" in err


def test_a_wrong_token_is_refused(cli: Cli):
    code, _, err = cli("status", token="wrong-token")
    assert code == 1
    assert "the admin token was refused" in err


@pytest.mark.parametrize(
    ("argv", "detail"),
    [
        (["activate", "nope"], "HTTP 404: model version 'nope' is not installed"),
        (["promote"], "HTTP 409: no canary is running: nothing to promote"),
        (["rollback"], "HTTP 409: there is no previously active version to roll back to"),
        (["activate", "v1", "--canary", "150"], "HTTP 422: canary_percent: Input should be less"),
    ],
)
def test_other_errors_print_the_servers_detail(cli: Cli, argv, detail):
    code, out, err = cli(*argv)
    assert (code, out) == (1, "")
    assert detail in err


def test_a_refused_bundle_prints_why(cli: Cli, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a gzip file")
    code, _, err = cli("push", str(bad))
    assert code == 1
    assert "HTTP 422:" in err


def test_a_missing_bundle_file_is_a_usage_error(cli: Cli, tmp_path):
    code, _, err = cli("push", str(tmp_path / "missing.tar.gz"))
    assert code == admin_cli.EXIT_USAGE
    assert "cannot read" in err and "missing.tar.gz" in err


def test_admin_api_disabled_says_so(client_for, make_settings, v1_dir, capsys):
    client = client_for(make_settings(bootstrap_bundle=v1_dir, admin_token=None))
    code, _, err = Cli(client, capsys)("list")
    assert code == 1
    assert "HTTP 404: Not Found (is the admin API enabled?" in err


def test_an_unreachable_url_is_named(capsys):
    url = f"http://127.0.0.1:{f.free_port()}"  # nothing listens there
    code = admin_cli.main(["--url", url, "--token", ADMIN_TOKEN, "--timeout", "5", "status"])
    _, err = capsys.readouterr()
    assert code == admin_cli.EXIT_UNREACHABLE
    assert f"could not reach {url}" in err


# --- a fleet: the active version per replica -------------------------------------------------


class Replicas(httpx.BaseTransport):
    """Hands each request to the replica named by its host (http://a -> replica a); a host
    with no replica refuses the connection."""

    def __init__(self, replicas: dict[str, TestClient]) -> None:
        self.replicas = replicas

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        replica = self.replicas.get(request.url.host)
        if replica is None:
            raise httpx.ConnectError("connection refused", request=request)
        r = replica.request(
            request.method,
            request.url.raw_path.decode(),
            content=request.read(),
            headers=request.headers,
        )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


@pytest.fixture
def fleet(
    client_for: Callable[[Settings], TestClient],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    v1_dir: Path,
) -> dict[str, TestClient]:
    """Two replicas on one Redis, as in test_fleet_api: a bootstrapped with v1, b empty."""

    def replica(name: str, **overrides: Any) -> TestClient:
        return client_for(
            make_settings(
                model_dir=tmp_path / f"models-{name}",
                redis_url=redis_url,
                redis_key_prefix=redis_prefix,
                replica_id=name,
                **overrides,
            )
        )

    return {"a": replica("a", bootstrap_bundle=v1_dir), "b": replica("b")}


def test_status_shows_the_active_version_per_replica(fleet, capsys, v2_file):
    with httpx.Client(transport=Replicas(fleet)) as http:
        cli = Cli(http, capsys)
        replicas = "--replicas=http://a,http://b"

        code, out, _ = cli("status", replicas)
        assert code == 0
        rows = [line.split() for line in out.splitlines()[1:]]
        assert rows == [
            ["http://a", "a", "v1", "-", "v1", "-"],
            ["http://b", "b", "v1", "-", "v1", "-"],
        ]

        # Pushed and activated through replica a (the CLI's --url); b follows the fleet.
        code, _, err = cli("--url", "http://a", "push", str(v2_file), "--activate")
        assert code == 0, err

        def serving() -> list[str]:
            return [s["serving"] for s in cli.json("status", replicas)]

        assert f.poll_until(lambda: serving() == ["v2", "v2"]), serving()

        code, out, _ = cli("status", "--replicas", "http://a,http://b,http://down")
        assert code == 1  # the table is incomplete
        down = out.splitlines()[-1]
        assert down.startswith("http://down") and "could not reach http://down" in down


# --- the live catalog --------------------------------------------------------------------------


def _top(client: TestClient) -> list[str]:
    r = client.post("/recommend", json={"history": ["i3", "i9"], "k": 5})
    return [i["item_id"] for i in r.json()["items"]]


def test_unavailable_and_available_by_argument_and_by_file(cli: Cli, embedded_client, tmp_path):
    top = _top(embedded_client)
    code, out, _ = cli("unavailable", top[0])
    assert code == 0 and "1 changed; 1 unavailable (revision 1)" in out
    listing = tmp_path / "sold-out.txt"
    listing.write_text(f"{top[1]}\n\n  {top[2]}  \n")
    assert cli.json("unavailable", "--file", str(listing))["unavailable"] == 3
    assert not set(top[:3]).intersection(_top(embedded_client))
    assert cli.json("available", top[0], "--file", str(listing))["changed"] == 3
    assert _top(embedded_client) == top
    code, out, _ = cli("catalog")
    assert code == 0 and "revision 3" in out and "0 unavailable" in out


def test_unavailable_without_ids_is_a_usage_error(cli: Cli):
    code, _, err = cli("unavailable")
    assert code == admin_cli.EXIT_USAGE and "--file" in err


def test_push_items_sends_a_foldin_file(cli: Cli, embedded_client, tmp_path, monkeypatch):
    monkeypatch.setattr(admin_cli, "VECTOR_CHUNK", 2)  # three calls for five items
    rng = np.random.default_rng(0)
    items = [{"item_id": f"n{k}", "vector": rng.normal(size=8).tolist()} for k in range(5)]
    path = tmp_path / "new-items.json"
    path.write_text(json.dumps({"version": "v1", "items": items}))
    code, out, err = cli("push-items", str(path))
    assert code == 0, err
    assert "v1: 5 added, 0 replaced (revision 3)" in out
    summary = cli.json("catalog")
    assert summary["items"] == {"v1": 5} and summary["revision"] == 3


def test_push_items_of_a_wrong_dimension_prints_the_servers_reason(cli: Cli, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": "v1", "items": [{"item_id": "n", "vector": [1.0]}]}))
    code, _, err = cli("push-items", str(path))
    assert code == admin_cli.EXIT_REFUSED and "8 values" in err
