"""Tests for utils.training.publish, against the real huggingface_hub client and a local stand-in for the Hub.

The stand-in is an in-process HTTP server on 127.0.0.1 that implements just what
``HfApi.create_repo`` and ``HfApi.upload_folder`` call (read from huggingface_hub
2.4's hf_api.py, _commit_api.py, _upload_pipeline.py and lfs.py):

- ``POST /api/repos/create``: the repo's URL;
- ``POST /api/validate-yaml``: the model card's metadata is fine;
- ``POST /api/models/{repo}/preupload/{rev}``: each file's upload mode ('regular', or 'lfs' when asked);
- ``POST /{repo}.git/info/lfs/objects/batch`` and ``PUT /lfs-upload/{oid}``: the basic LFS transfer;
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit, files inline in base64 or as LFS pointers.

Every request is recorded, and anything else is answered 404, so an unexpected call shows up.
No test touches the real network: every call is pointed at the stand-in (or at a closed
loopback port), proxies are unset, and a guard refuses any non-loopback connection.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import json
import socket
import sys
import threading
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load, save_file

from utils.training import publish
from utils.training.publish import publish_to_hub

TOKEN = "hf_test_token_123"
REPO_ID = "me/tiny-gpt"
SAFETY_NET_S = 60  # far above any bounded wait here; only stops a hang from stalling the suite
# huggingface_hub's LFS upload (lfs.py) still hands httpx2 a file as data=; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
CARD = "---\nlicense: mit\nlibrary_name: utils\n---\n# tiny-gpt\n\nA 2-layer test model.\n"


# --------------------------------------------------------------------------- the stand-in Hub


class HubStandIn:
    """Just enough of the Hub's HTTP API for create_repo and upload_folder; records every request.

    Args:
        fail_status: answer requests with this status and an error message (401, 503 ...).
        fail_on: only requests whose path starts with this (all of them by default).
        lfs_paths: files whose preupload mode is 'lfs' rather than 'regular'.
    """

    def __init__(self, *, fail_status: int | None = None, fail_on: str = "/", lfs_paths: tuple[str, ...] = ()) -> None:
        self.fail_status = fail_status
        self.fail_on = fail_on
        self.lfs_paths = lfs_paths
        self.requests: list[dict] = []  # {"method", "path", "headers", "body"}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> bytes PUT to the LFS upload URL
        self.commits: list[dict] = []  # {"header": {...}, "files": {path: bytes}}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="hub-stand-in", daemon=True
        )

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(SAFETY_NET_S)

    def paths(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.requests if method is None or r["method"] == method]

    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """The status and JSON answer for one request."""
        if self.fail_status is not None and path.startswith(self.fail_on):
            return self.fail_status, {"error": f"stand-in refuses: status {self.fail_status}"}
        route = path.split("?")[0]
        if method == "POST" and route == "/api/repos/create":
            payload = json.loads(body)
            return 200, {"url": f"{self.url}/{payload['organization']}/{payload['name']}"}
        if method == "POST" and route == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and "/preupload/" in route:
            return 200, {"files": [self._upload_mode(f["path"]) for f in json.loads(body)["files"]]}
        if method == "POST" and route.endswith(".git/info/lfs/objects/batch"):
            return 200, {"transfer": "basic", "objects": [self._lfs_action(o) for o in json.loads(body)["objects"]]}
        if method == "PUT" and route.startswith("/lfs-upload/"):
            self.lfs_objects[route.rsplit("/", 1)[1]] = body
            return 200, {}
        if method == "POST" and "/commit/" in route:
            return 200, self._commit(route, body)
        return 404, {"error": f"the stand-in does not implement {method} {route}"}

    def _upload_mode(self, path: str) -> dict:
        mode = "lfs" if path in self.lfs_paths else "regular"
        return {"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": None}

    def _lfs_action(self, obj: dict) -> dict:
        return {
            "oid": obj["oid"],
            "size": obj["size"],
            "actions": {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}},
        }

    def _commit(self, route: str, body: bytes) -> dict:
        """Rebuild the committed files from the NDJSON body: a header line, then one line per file."""
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        files = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                assert value["encoding"] == "base64"
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                files[value["path"]] = self.lfs_objects[value["oid"]]
        self.commits.append({"header": lines[0], "files": files})
        oid = hashlib.sha1(body).hexdigest()
        repo = route.split("/api/models/")[1].split("/commit/")[0]
        return {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True}


def _make_handler(hub: HubStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer carries a length

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PUT(self) -> None:
            self._answer("PUT")

        def _answer(self, method: str) -> None:
            body = self._read_body()
            hub.requests.append(
                {
                    "method": method,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            status, answer = hub.route(method, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status >= 400:
                self.send_header("X-Error-Message", answer["error"])
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def log_message(self, *args: object) -> None:
            pass  # quiet: the requests are recorded instead

    return Handler


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def hub_env(monkeypatch, tmp_path_factory):
    """No token, no proxy, no telemetry, a private HF_HOME, and no way off this machine."""
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # Read once, at import: a shell with HF_HUB_OFFLINE=1 would turn every publish here into a skip.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test guard: refused a connection to {address} (tests stay on loopback)")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def export_dir(tmp_path):
    """A small export folder as export_state_dict writes it: weights, config, metadata and a model card."""
    folder = tmp_path / "export"
    folder.mkdir()
    torch.manual_seed(0)
    save_file({"wte.weight": torch.randn(16, 8), "ln.bias": torch.zeros(8)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"vocab_size": 16, "d_model": 8, "n_layers": 2}))
    (folder / "metadata.json").write_text(json.dumps({"format": "utils-export", "step": 10}))
    (folder / "README.md").write_text(CARD)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry under ``folder`` (hidden ones too) with its bytes; a folder maps to b''."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b"" for p in folder.rglob("*")}


def run_bounded(fn, *args, **kwargs):
    """Call ``fn`` in a thread and fail, rather than hang the suite, if it does not return within the safety net."""
    outcome: list = []

    def call() -> None:
        try:
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as err:  # handed back to the test's thread below
            outcome.append((False, err))

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(SAFETY_NET_S)
    assert outcome, f"{fn.__name__} did not return within the {SAFETY_NET_S} s safety net"
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def export_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("README.md", *publish.EXPORT_FILES)}


EXPORTED = sorted(["README.md", "config.json", "metadata.json", "model.safetensors"])


# --------------------------------------------------------------------------- a real publish


@pytest.mark.parametrize(
    "path",
    ["xet pipeline, regular files", "create_commit, LFS weights"],
)
def test_publish_sends_the_export_folder_byte_for_byte(export_dir, monkeypatch, path):
    """Both of the client's upload paths: hf_xet installed (the default; small files go inline), and
    without hf_xet (create_commit; the weights go through the basic LFS transfer)."""
    lfs_paths = ()
    if path.startswith("create_commit"):
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        lfs_paths = ("model.safetensors",)
    elif importlib.util.find_spec("hf_xet") is None:
        pytest.skip("hf_xet is not installed, so upload_folder takes the create_commit path tested beside this")
    (export_dir / ".ipynb_checkpoints").mkdir()  # a notebook's bookkeeping: neither listed nor sent
    (export_dir / ".ipynb_checkpoints" / "README-checkpoint.md").write_text("old card")
    before = snapshot(export_dir)

    with HubStandIn(lfs_paths=lfs_paths) as hub:
        result = run_bounded(
            publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=hub.url, commit_message="first upload"
        )

    assert result == {
        "status": "published",
        "repo_id": REPO_ID,
        "url": f"{hub.url}/{REPO_ID}",
        "commit": hashlib.sha1(hub.requests[-1]["body"]).hexdigest(),
        "files": EXPORTED,
    }
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["files"] == export_bytes(export_dir)  # byte-identical, hidden files left out
    assert commit["header"]["value"]["summary"] == "first upload"
    created = json.loads(hub.requests[0]["body"])
    assert hub.paths("POST")[0] == "/api/repos/create"
    assert created == {"name": "tiny-gpt", "organization": "me", "visibility": "private"}
    assert {r["headers"].get("authorization") for r in hub.requests if not r["path"].startswith("/lfs-upload/")} == {
        f"Bearer {TOKEN}"
    }
    assert sorted(set(hub.paths())) == sorted(set(_expected_paths(lfs_paths, hub.lfs_objects)))
    received = load(commit["files"]["model.safetensors"])
    torch.manual_seed(0)  # the export_dir fixture's weights, rebuilt
    torch.testing.assert_close(received, {"wte.weight": torch.randn(16, 8), "ln.bias": torch.zeros(8)}, rtol=0, atol=0)
    assert snapshot(export_dir) == before  # nothing written into the export folder


def _expected_paths(lfs_paths, lfs_objects) -> list[str]:
    paths = [
        "/api/repos/create",
        "/api/validate-yaml",
        f"/api/models/{REPO_ID}/preupload/main",
        f"/api/models/{REPO_ID}/commit/main",
    ]
    if lfs_paths:
        paths += [f"/{REPO_ID}.git/info/lfs/objects/batch", *(f"/lfs-upload/{oid}" for oid in lfs_objects)]
    return paths


def test_the_lfs_path_really_carried_the_weights(export_dir, monkeypatch):
    """The control for the LFS case: the weights arrived by PUT, keyed by their sha256, not inline."""
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    with HubStandIn(lfs_paths=("model.safetensors",)) as hub:
        assert run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=hub.url)["status"] == "published"
    weights = (export_dir / "model.safetensors").read_bytes()
    assert hub.lfs_objects == {hashlib.sha256(weights).hexdigest(): weights}
    commit_lines = [json.loads(line) for line in hub.requests[-1]["body"].splitlines()]
    assert {line["key"] for line in commit_lines} == {"header", "file", "lfsFile"}


def test_private_false_asks_for_a_public_repo_and_the_token_can_come_from_hf_token(export_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    with HubStandIn() as hub:
        result = run_bounded(publish_to_hub, export_dir, REPO_ID, private=False, endpoint=hub.url)
    assert result["status"] == "published"
    assert json.loads(hub.requests[0]["body"])["visibility"] == "public"
    assert hub.requests[0]["headers"]["authorization"] == "Bearer hf_from_env"
    assert hub.commits[0]["header"]["value"]["summary"] == publish.DEFAULT_COMMIT_MESSAGE


def test_hf_endpoint_is_used_when_no_endpoint_is_passed(export_dir, monkeypatch):
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
        result = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN)
    assert result["status"] == "published"
    assert result["url"] == f"{hub.url}/{REPO_ID}"
    assert hub.commits[0]["files"] == export_bytes(export_dir)


# --------------------------------------------------------------------------- no upload: dry run, skipped


def test_dry_run_lists_the_files_and_contacts_no_server(export_dir):
    (export_dir / ".cache").mkdir()
    (export_dir / ".cache" / "lock").write_text("x")
    with HubStandIn() as hub:
        result = publish_to_hub(export_dir, REPO_ID, token=TOKEN, endpoint=hub.url, dry_run=True)
    assert result == {
        "status": "dry_run",
        "repo_id": REPO_ID,
        "files": EXPORTED,
        "bytes": sum(len(data) for data in export_bytes(export_dir).values()),
        "private": True,
    }
    assert hub.requests == []


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-16])  # the header is whole; the last tensor's bytes are cut off


DAMAGED_EXPORTS = {
    "config.json not JSON": ("config.json", lambda p: p.write_text("{'vocab_size': 16,"), "is not valid JSON"),
    "config.json a list": ("config.json", lambda p: p.write_text("[16, 8]"), "holds a JSON list, not an object"),
    "metadata.json empty": ("metadata.json", lambda p: p.write_text(""), "is not valid JSON"),
    "weights of 3 bytes": ("model.safetensors", lambda p: p.write_bytes(b"abc"), "hold no complete header"),
    "weights that are text": ("model.safetensors", lambda p: p.write_text("x" * 64), "hold no complete header"),
    "weights truncated": ("model.safetensors", _truncate, "is truncated or not a safetensors file (tensor"),
}


@pytest.mark.parametrize("case", DAMAGED_EXPORTS, ids=str)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "upload"])
def test_a_damaged_export_file_is_named_before_a_dry_run_or_an_upload(export_dir, case, dry_run):
    name, damage, problem = DAMAGED_EXPORTS[case]
    damage(export_dir / name)
    with HubStandIn() as hub:
        with pytest.raises(ValueError, match="Export the model again") as raised:
            publish_to_hub(export_dir, REPO_ID, token=TOKEN, endpoint=hub.url, dry_run=dry_run)
    assert f"export_dir {str(export_dir)!r}: {name} " in str(raised.value) and problem in str(raised.value)
    assert hub.requests == []


def test_no_token_is_skipped_at_once_with_the_fix(export_dir):
    with HubStandIn() as hub:
        result = publish_to_hub(export_dir, REPO_ID, endpoint=hub.url)
    assert result == {"status": "skipped", "reason": "no token: pass token= or set HF_TOKEN"}
    assert hub.requests == []


def test_offline_mode_is_skipped_and_says_so(export_dir, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with HubStandIn() as hub:
        result = publish_to_hub(export_dir, REPO_ID, token=TOKEN, endpoint=hub.url)
    assert result["status"] == "skipped"
    assert "HF_HUB_OFFLINE" in result["reason"]
    assert hub.requests == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on leaving: a connection there is refused


def test_an_unreachable_endpoint_is_skipped_with_the_reason(export_dir):
    before = snapshot(export_dir)
    port = _closed_port()
    result = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert result["status"] == "skipped"
    assert f"cannot reach http://127.0.0.1:{port}" in result["reason"]
    assert "nothing was uploaded" in result["reason"]
    assert snapshot(export_dir) == before


def test_a_connection_that_never_opens_is_skipped_after_timeout_s(export_dir):
    """A host that drops the handshake, as a dead network does: a listening socket whose accept queue is
    full makes the kernel drop new SYNs, so connect() waits until the pre-flight's timeout."""
    with socket.socket() as server, socket.create_connection(_listen(server, backlog=0)) as _filler:
        address = server.getsockname()
        try:
            socket.create_connection(address, timeout=0.2).close()
            pytest.skip("this kernel completes handshakes beyond the accept queue, so nothing stalls here")
        except TimeoutError:
            pass  # the control: a connection there does stall
        endpoint = f"http://127.0.0.1:{address[1]}"
        result = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=endpoint, timeout_s=0.5)
    assert result["status"] == "skipped"
    assert "no connection within timeout_s=0.5 s" in result["reason"]


def _listen(server: socket.socket, backlog: int) -> tuple[str, int]:
    server.bind(("127.0.0.1", 0))
    server.listen(backlog)
    return server.getsockname()


# --------------------------------------------------------------------------- failed: the server or the client refused


def test_a_server_that_never_answers_fails_after_timeout_s_and_the_client_timeout_is_restored(export_dir):
    """Without the bounded client this call would hang: huggingface_hub's shared client has no timeout."""
    with socket.socket() as server:
        _listen(server, backlog=8)  # connections open (the kernel accepts them) but nothing ever reads or answers
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        result = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=endpoint, timeout_s=0.5)
    assert result["status"] == "failed"
    assert result["reason"].startswith("no answer within timeout_s=0.5 s (ReadTimeout)")
    assert huggingface_hub.get_session().timeout.read is None  # the shared client is as it was


@pytest.mark.parametrize("status", [401, 403, 503])
def test_a_refusing_server_gives_failed_with_its_message(export_dir, status):
    before = snapshot(export_dir)
    with HubStandIn(fail_status=status) as hub:
        result = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=hub.url)
    assert result["status"] == "failed"
    assert str(status) in result["reason"]
    assert f"stand-in refuses: status {status}" in result["reason"]
    assert hub.commits == []
    assert snapshot(export_dir) == before


def test_a_refused_lfs_upload_gives_failed_with_the_servers_answer(export_dir, monkeypatch):
    """The client wraps this answer in a RuntimeError; the reason still carries the status and message."""
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    with HubStandIn(fail_status=403, fail_on="/lfs-upload/", lfs_paths=("model.safetensors",)) as hub:
        result = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=hub.url)
    assert result == {"status": "failed", "reason": "the Hub answered 403: stand-in refuses: status 403"}
    assert any(path.startswith("/lfs-upload/") for path in hub.paths("PUT"))
    assert hub.commits == []


# --------------------------------------------------------------------------- bad input raises before any request


def _bad_calls(folder: Path) -> list:
    """(what is wrong, the call's arguments, the error type, a phrase the message must hold)."""
    no_weights = folder.parent / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    return [
        ("missing folder", dict(export_dir=folder.parent / "nope"), FileNotFoundError, "export_dir: no folder"),
        ("a file, not a folder", dict(export_dir=folder / "config.json"), ValueError, "export_dir must be a folder"),
        ("missing files", dict(export_dir=no_weights), FileNotFoundError, "lacks model.safetensors, metadata.json"),
        ("not a path", dict(export_dir=3), ValueError, "export_dir must be a file or folder path"),
        ("no owner", dict(repo_id="mymodel"), ValueError, "repo_id must be 'owner/name', got 'mymodel'"),
        ("a space", dict(repo_id="me/tiny gpt"), ValueError, "repo_id must be 'owner/name', got 'me/tiny gpt'"),
        ("two slashes", dict(repo_id="me/tiny/gpt"), ValueError, "exactly one '/'"),
        ("double dot", dict(repo_id="me/tiny..gpt"), ValueError, "without '--', '..'"),
        ("not a string", dict(repo_id=None), ValueError, "repo_id must be a string"),
        ("dry_run=1", dict(dry_run=1), ValueError, "dry_run must be True or False, got 1"),
        ("private='yes'", dict(private="yes"), ValueError, "private must be True or False"),
        ("timeout_s=0", dict(timeout_s=0), ValueError, "timeout_s must be a positive finite number"),
        ("timeout_s=nan", dict(timeout_s=float("nan")), ValueError, "timeout_s must be a positive finite number"),
        ("timeout_s=True", dict(timeout_s=True), ValueError, "a bool is not a number"),
        ("empty token", dict(token=""), ValueError, "token must be a non-empty string or None"),
        ("empty message", dict(commit_message=" "), ValueError, "commit_message must be a non-empty string"),
        ("ftp endpoint", dict(endpoint="ftp://hub"), ValueError, "endpoint must be an http(s) URL"),
    ]


def test_bad_inputs_raise_naming_the_argument_before_any_request(export_dir):
    with HubStandIn() as hub:
        base = dict(export_dir=export_dir, repo_id=REPO_ID, token=TOKEN, endpoint=hub.url)
        for what, change, error, phrase in _bad_calls(export_dir):
            kwargs = {**base, **change}
            with pytest.raises(error) as raised:
                publish_to_hub(kwargs.pop("export_dir"), kwargs.pop("repo_id"), **kwargs)
            assert phrase in str(raised.value), what
        assert hub.requests == []
        control = run_bounded(publish_to_hub, export_dir, REPO_ID, token=TOKEN, endpoint=hub.url)
    assert control["status"] == "published"  # the same call with good arguments does reach the server


def test_a_bad_hf_endpoint_is_named(export_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "huggingface.co")
    with pytest.raises(ValueError, match="HF_ENDPOINT must be an http"):
        publish_to_hub(export_dir, REPO_ID, dry_run=True)


# --------------------------------------------------------------------------- without huggingface_hub


def test_without_huggingface_hub_a_publish_gives_the_install_hint_and_the_rest_still_works(export_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now raises ImportError
    with HubStandIn() as hub:
        with pytest.raises(ImportError, match="pip install huggingface_hub"):
            publish_to_hub(export_dir, REPO_ID, token=TOKEN, endpoint=hub.url)
        assert publish_to_hub(export_dir, REPO_ID, dry_run=True)["files"] == EXPORTED
        assert publish_to_hub(export_dir, REPO_ID)["status"] == "skipped"  # no token
    assert hub.requests == []


# --------------------------------------------------------------------------- the pre-flight, and the test guard


def test_the_guard_refuses_any_connection_off_this_machine():
    """The control for the autouse guard: were a call to leak past the stand-in, it would fail, not go out."""
    with pytest.raises(OSError, match="test guard"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    assert publish.connect_error("192.0.2.1", 443, 1.0).startswith("test guard")


def test_the_preflight_connects_to_the_proxy_the_environment_names(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert publish.first_hop("https://huggingface.co") == ("proxy.internal", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert publish.first_hop("https://huggingface.co") == ("huggingface.co", 443)
    assert publish.first_hop("http://127.0.0.1:8080") == ("127.0.0.1", 8080)
