"""`recsys-admin`: the admin API (`service.routes.admin`) from a shell.

    export RECSYS_URL=http://localhost:8000 RECSYS_ADMIN_TOKEN=...   # or --url / --token
    recsys-admin push bundles/v2.tar.gz              # upload: validated, installed, not active
    recsys-admin push bundles/v2.tar.gz --activate   # ... and switch every replica to it
    recsys-admin list                                # installed versions, which one is active
    recsys-admin activate v2                         # switch every replica to v2
    recsys-admin activate v3 --canary 10             # v3 for 10 % of the users
    recsys-admin promote                             # the canary becomes the active version
    recsys-admin abort                               # drop the canary
    recsys-admin rollback                            # back to the previously active version
    recsys-admin status --replicas http://10.0.0.5:8000,http://10.0.0.6:8000
    recsys-admin unavailable B00ABC123 B00XYZ789     # never recommend these, fleet-wide
    recsys-admin unavailable --file sold-out.txt     # one item ID per line
    recsys-admin available --file back-in-stock.txt  # recommend them again
    recsys-admin push-items new-items.json           # vectors from `python -m models foldin`
    recsys-admin catalog                             # the live catalog's revision and sizes

Human-readable output by default; `--json` prints the server's JSON instead (`push` prints
`{"installed": ..., "activated": ...}`, `status` a list with one object per replica, each with
its `url`). Exit codes: 0 done, 1 the server refused (the message says why), 2 bad usage or
unreadable bundle file, 3 the server could not be reached.

Thin on purpose: every subcommand is one or two HTTP calls; the server does the checks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://localhost:8000"
URL_ENV = "RECSYS_URL"
TOKEN_ENV = "RECSYS_ADMIN_TOKEN"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class AdminError(Exception):
    """An admin call that did not succeed; the message is what the operator reads."""

    def __init__(self, message: str, *, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Output(NamedTuple):
    """What a subcommand prints: `body` with --json, else `text`; and its exit code."""

    body: Any
    text: str
    exit_code: int = EXIT_OK


class AdminApi:
    """The admin API of one server, called through `http`."""

    def __init__(self, http: httpx.Client, *, url: str, token: str | None) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """The JSON answer of `method path`; AdminError for anything but a 2xx."""
        try:
            r = self.http.request(
                method, self.url + path, headers={**self.headers, **(headers or {})}, **kwargs
            )
        except httpx.TimeoutException as e:
            raise AdminError(
                f"{self.url} did not answer in time ({type(e).__name__}); "
                "a large bundle may need a longer --timeout",
                exit_code=EXIT_UNREACHABLE,
            ) from e
        except httpx.TransportError as e:
            raise AdminError(
                f"could not reach {self.url}: {e}; check --url or {URL_ENV}",
                exit_code=EXIT_UNREACHABLE,
            ) from e
        if r.status_code == 401:
            raise AdminError(f"no admin token: set {TOKEN_ENV} or --token")
        if r.status_code == 403:
            raise AdminError("the admin token was refused")
        if r.is_error:
            raise AdminError(f"HTTP {r.status_code}: {_detail(r)}")
        return r.json()


def _detail(r: httpx.Response) -> str:
    """The server's `detail`: a message, or pydantic's list of invalid fields."""
    try:
        detail = r.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return r.text.strip()[:300] or r.reason_phrase  # not our server's answer (a proxy's)
    if isinstance(detail, list):
        return "; ".join(
            ".".join(str(p) for p in entry.get("loc", [])[1:]) + f": {entry.get('msg')}"
            for entry in detail
        )
    if detail == "Not Found" and "/admin/" in str(r.request.url):
        return "Not Found (is the admin API enabled? the server needs ADMIN_TOKEN)"
    return str(detail)


# --- subcommands ------------------------------------------------------------------------------


def push(api: AdminApi, args: argparse.Namespace) -> Output:
    path: Path = args.bundle
    try:
        f = path.open("rb")
    except OSError as e:
        raise AdminError(f"cannot read {path}: {e.strerror}", exit_code=EXIT_USAGE) from e
    with f:  # streamed; httpx sends its Content-Length
        installed = api.call(
            "POST", "/admin/bundles", content=f, headers={"Content-Type": "application/gzip"}
        )
    version = installed["version"]
    manifest = installed.get("manifest") or {}
    text = f"installed {version} ({manifest.get('n_items', '?')} items)"
    activated = None
    if args.activate or args.canary is not None:
        activated, more, _ = _activate(api, version, args.canary)
        text += "\n" + more
    return Output({"installed": installed, "activated": activated}, text)


def list_versions(api: AdminApi, args: argparse.Namespace) -> Output:
    body = api.call("GET", "/admin/bundles")
    rows = []
    for v in body["versions"]:
        manifest = v.get("manifest") or {}
        ndcg = (manifest.get("metrics") or {}).get("test_ndcg@10")
        rows.append(
            [
                v["version"],
                "*" if v["active"] else "",
                (v.get("created_at") or "")[:19].replace("T", " "),  # to the second, UTC
                manifest.get("n_items"),
                None if ndcg is None else f"{ndcg:.4f}",
                v.get("error"),
            ]
        )
    header = ["VERSION", "ACTIVE", "CREATED", "ITEMS", "NDCG@10", "ERROR"]
    return Output(body, _table(header, rows) if rows else "no versions installed")


def activate(api: AdminApi, args: argparse.Namespace) -> Output:
    return _activate(api, args.version, args.canary)


def _activate(api: AdminApi, version: str, canary: float | None) -> Output:
    if canary is None:
        body = api.call("POST", f"/admin/bundles/{quote(version, safe='')}/activate")
        return Output(body, f"active version: {body['version']}")
    body = api.call("POST", "/admin/activate", json={"version": version, "canary_percent": canary})
    return Output(body, _status_table([(api.url, body)]))


def promote(api: AdminApi, args: argparse.Namespace) -> Output:
    body = api.call("POST", "/admin/canary/promote")
    return Output(body, _status_table([(api.url, body)]))


def abort(api: AdminApi, args: argparse.Namespace) -> Output:
    body = api.call("POST", "/admin/canary/abort")
    return Output(body, _status_table([(api.url, body)]))


def rollback(api: AdminApi, args: argparse.Namespace) -> Output:
    body = api.call("POST", "/admin/rollback")
    return Output(body, f"rolled back; active version: {body['version']}")


# Changes are sent in calls of at most this many IDs or vectors (the server's defaults for
# CATALOG_MAX_IDS and CATALOG_MAX_VECTORS allow 100,000 and 10,000).
ID_CHUNK = 50_000
VECTOR_CHUNK = 5_000


def _item_ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.item_ids)
    if args.file is not None:
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise AdminError(f"cannot read {args.file}: {e.strerror}", exit_code=EXIT_USAGE) from e
        ids += [line.strip() for line in lines if line.strip()]
    if not ids:
        raise AdminError("name item IDs, or --file with one per line", exit_code=EXIT_USAGE)
    return ids


def _availability(api: AdminApi, args: argparse.Namespace, path: str) -> Output:
    ids = _item_ids(args)
    changed, body = 0, {}
    for start in range(0, len(ids), ID_CHUNK):
        body = api.call("POST", path, json={"item_ids": ids[start : start + ID_CHUNK]})
        changed += body["changed"]
    body = {**body, "changed": changed}
    text = f"{changed} changed; {body['unavailable']} unavailable (revision {body['revision']})"
    return Output(body, text)


def unavailable(api: AdminApi, args: argparse.Namespace) -> Output:
    return _availability(api, args, "/admin/catalog/unavailable")


def available(api: AdminApi, args: argparse.Namespace) -> Output:
    return _availability(api, args, "/admin/catalog/available")


def push_items(api: AdminApi, args: argparse.Namespace) -> Output:
    """Send a file of item vectors (`{"version": ..., "items": [{"item_id", "vector"}]}`, as
    `python -m models foldin` writes it) in calls the server accepts."""
    try:
        data = json.loads(args.file.read_text(encoding="utf-8"))
        version = args.version or data["version"]
        items = data["items"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdminError(
            f"cannot read item vectors from {args.file}: {e}", exit_code=EXIT_USAGE
        ) from e
    added = replaced = 0
    body: dict[str, Any] = {}
    for start in range(0, len(items), VECTOR_CHUNK):
        body = api.call(
            "POST",
            f"/admin/catalog/items/{quote(version, safe='')}",
            json={"items": items[start : start + VECTOR_CHUNK]},
        )
        added, replaced = added + body["added"], replaced + body["replaced"]
    body = {**body, "added": added, "replaced": replaced}
    text = f"{version}: {added} added, {replaced} replaced (revision {body.get('revision')})"
    return Output(body, text)


def catalog(api: AdminApi, args: argparse.Namespace) -> Output:
    body = api.call("GET", "/admin/catalog")
    vectors = ", ".join(f"{v}: {n}" for v, n in body["items"].items()) or "none"
    text = (
        f"revision {body['revision']} (this replica serves {body['applied_revision']}); "
        f"{body['unavailable']} unavailable items; added vectors: {vectors}"
    )
    return Output(body, text)


def status(api: AdminApi, args: argparse.Namespace) -> Output:
    """One replica (--url), or each of --replicas: a replica that fails gets its error in
    the table, and the command exits 1."""
    if not args.replicas:
        body = api.call("GET", "/admin/status")
        return Output([{"url": api.url, **body}], _status_table([(api.url, body)]))
    rows: list[tuple[str, dict[str, Any]]] = []
    failed = False
    for url in (u.strip() for u in args.replicas.split(",")):
        if not url:
            continue
        replica = AdminApi(api.http, url=url, token=args.token)
        try:
            body = replica.call("GET", "/admin/status")
        except AdminError as e:
            body = {"error": str(e)}
            failed = True
        rows.append((replica.url, body))
    # The table is the answer; the exit code tells a script when it is incomplete.
    return Output(
        [{"url": url, **body} for url, body in rows],
        _status_table(rows),
        EXIT_REFUSED if failed else EXIT_OK,
    )


def _status_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    def canary(body: dict[str, Any]) -> str | None:
        if not body.get("canary"):
            return None
        return f"{body['canary']} ({body.get('canary_percent', 0):g}%)"

    header = ["URL", "REPLICA", "SERVING", "CANARY", "FLEET_ACTIVE", "ERROR"]
    return _table(
        header,
        [
            [
                url,
                body.get("replica"),
                body.get("serving"),
                canary(body),
                body.get("fleet_active"),
                body.get("error"),
            ]
            for url, body in rows
        ],
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


# --- the command line ------------------------------------------------------------------------

Command = Callable[[AdminApi, argparse.Namespace], Output]


def _add_connection_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the subcommand. On the subcommands the default is SUPPRESS,
    # so a flag given before the subcommand is not overwritten by the subparser's default.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--url", default=default, help=f"server base URL (env {URL_ENV}; default {DEFAULT_URL})"
    )
    parser.add_argument("--token", default=default, help=f"admin token (env {TOKEN_ENV})")
    parser.add_argument(
        "--json", action="store_true", default=False if top else default, help="print raw JSON"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0 if top else default,
        help="seconds to wait for an answer (activation loads and warms the model; default 300)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-admin",
        description="Push, list, activate, canary, promote, roll back model bundles; "
        "mark items unavailable, add item vectors; show what each replica serves.",
    )
    _add_connection_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, command: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_connection_flags(p, top=False)
        p.set_defaults(run=command)
        return p

    p = add("push", push, "upload a bundle .tar.gz (validated and installed, not activated)")
    p.add_argument("bundle", type=Path, help="the .tar.gz written by `python -m models compress`")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--activate", action="store_true", help="then make it the active version")
    how.add_argument(
        "--canary", type=float, metavar="PERCENT", help="then serve it to PERCENT %% of users"
    )

    add("list", list_versions, "installed versions; which one is active")

    p = add("activate", activate, "make VERSION the active version on every replica")
    p.add_argument("version")
    p.add_argument(
        "--canary",
        type=float,
        metavar="PERCENT",
        help="serve VERSION to PERCENT %% of users only (sticky per user_id)",
    )

    add("promote", promote, "the running canary becomes the active version")
    add("abort", abort, "drop the running canary")
    add("rollback", rollback, "switch back to the previously active version")

    for name, command, what in (
        ("unavailable", unavailable, "never recommend these items, on every replica"),
        ("available", available, "recommend these items again"),
    ):
        p = add(name, command, what)
        p.add_argument("item_ids", nargs="*", metavar="ITEM_ID")
        p.add_argument("--file", type=Path, help="a file of item IDs, one per line")

    p = add("push-items", push_items, "add or replace item vectors of a version")
    p.add_argument("file", type=Path, help="JSON written by `python -m models foldin`")
    p.add_argument("--version", help="the version they belong to (default: the file's)")

    add("catalog", catalog, "the live catalog: revision, unavailable items, added vectors")

    p = add("status", status, "what each replica serves against the fleet's state")
    p.add_argument(
        "--replicas",
        metavar="URL,URL,...",
        help="ask each of these replicas (default: only --url)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, client: httpx.Client | None = None) -> int:
    """Run one subcommand; return the exit code. `client` replaces the HTTP client (tests
    pass a fastapi TestClient)."""
    args = build_parser().parse_args(argv)
    args.url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    args.token = args.token or os.environ.get(TOKEN_ENV) or None
    if client is None:
        with httpx.Client(timeout=args.timeout) as http:
            return _run(args, http)
    return _run(args, client)


def _run(args: argparse.Namespace, http: httpx.Client) -> int:
    api = AdminApi(http, url=args.url, token=args.token)
    try:
        out: Output = args.run(api, args)
    except AdminError as e:
        print(f"recsys-admin: error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(out.body, indent=2) if args.json else out.text)
    return out.exit_code


if __name__ == "__main__":
    sys.exit(main())
