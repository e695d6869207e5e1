"""Publish an export folder to the Hugging Face Hub, and never hang or prompt when that cannot happen.

``publish_to_hub`` uploads what ``export_state_dict`` wrote (``model.safetensors``,
``config.json``, ``metadata.json`` and usually a ``README.md`` model card) to a
model repo, and returns what happened as a dict whose ``status`` is one of:

- ``'dry_run'``: the files that would be uploaded, with no network at all;
- ``'skipped'``: nothing was sent (no token, offline mode, or the Hub cannot be
  reached within ``timeout_s``), with the reason;
- ``'published'``: the repo URL, the commit id and the files;
- ``'failed'``: the client or the server refused (401, 403, 5xx, a timeout),
  with the server's message.

Bad arguments raise before any network; the token comes from ``token=`` or
``HF_TOKEN`` only, never from a prompt or a cached login. ``huggingface_hub``
is imported only for a real upload, so dry runs work without it. Nothing is
ever written into the export folder.

Example:
    >>> publish_to_hub("exports/tiny-gpt", "me/tiny-gpt", dry_run=True)["files"]
    ['README.md', 'config.json', 'metadata.json', 'model.safetensors']
    >>> publish_to_hub("exports/tiny-gpt", "me/tiny-gpt")  # HF_TOKEN set
    {'status': 'published', 'repo_id': 'me/tiny-gpt', 'url': 'https://huggingface.co/me/tiny-gpt', ...}
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from utils.checks import check_bool, check_path, check_positive_number, check_str
from utils.optional import import_optional

EXPORT_FILES = ("model.safetensors", "config.json", "metadata.json")
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_COMMIT_MESSAGE = "Upload a model exported by utils"
NO_TOKEN_REASON = "no token: pass token= or set HF_TOKEN"
# The Hub's rule for each half of 'owner/name': 1-96 ASCII letters, digits, '_', '-' or '.', not starting or
# ending with '-' or '.', and no '--' or '..' (checked apart).
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_REPO_PART}/{_REPO_PART}")
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on the JSON header


def publish_to_hub(
    export_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = True,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    dry_run: bool = False,
    endpoint: str | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Upload an export folder to a Hub model repo (created if missing), or say why it did not.

    Args:
        export_dir: the folder ``export_state_dict`` wrote; it must hold ``model.safetensors``,
            ``config.json`` and ``metadata.json``. Every file in it is uploaded except hidden
            ones (``.git``, ``.ipynb_checkpoints`` ...).
        repo_id: ``'owner/name'``, the owner being your user or organization name.
        token: a Hub access token with write access; None reads ``HF_TOKEN``.
        private: create the repo private (an existing repo keeps its visibility).
        commit_message: the commit's summary line.
        dry_run: list what would be uploaded, and touch no network.
        endpoint: the Hub URL; None reads ``HF_ENDPOINT``, else ``https://huggingface.co``.
        timeout_s: the most seconds to wait to connect, and for each request to answer.

    Returns:
        A dict with ``status`` ('dry_run', 'skipped', 'published' or 'failed') and the details
        (see the module docstring). It never returns None and never raises for a network error.

    Raises:
        ValueError: a bad argument (named, with the fix), or a damaged export file (config.json or
            metadata.json not JSON, model.safetensors without a readable header), before any work.
        FileNotFoundError: no such folder, or one of the export files is missing from it.
        ImportError: a real upload without ``huggingface_hub`` installed.
    """
    folder = check_export_dir(export_dir)
    check_repo_id(repo_id)
    check_str(token, "token", allow_none=True)
    check_bool(private, "private")
    check_str(commit_message, "commit_message")
    check_bool(dry_run, "dry_run")
    hub_url = resolve_endpoint(endpoint)
    check_positive_number(timeout_s, "timeout_s")
    files = list_export_files(folder)
    if dry_run:
        total_bytes = sum((folder / name).stat().st_size for name in files)
        return {"status": "dry_run", "repo_id": repo_id, "files": files, "bytes": total_bytes, "private": private}
    token = token or os.environ.get("HF_TOKEN", "").strip() or None
    if token is None:
        return {"status": "skipped", "reason": NO_TOKEN_REASON}
    hub = import_huggingface_hub()
    reason = unreachable_reason(hub, hub_url, timeout_s)
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    plan = _UploadPlan(folder, tuple(files), repo_id, token, private, commit_message, hub_url, timeout_s)
    return _upload(hub, plan)


@dataclass(frozen=True)
class _UploadPlan:
    """Everything a real upload needs, checked."""

    folder: Path
    files: tuple[str, ...]
    repo_id: str
    token: str
    private: bool
    commit_message: str
    endpoint: str
    timeout_s: float


# --------------------------------------------------------------------------- checks, before any work


def check_export_dir(export_dir: Any) -> Path:
    """The export folder as a Path, or an error naming what is missing.

    The files are checked too, so that neither a dry run nor an upload reports a damaged export as
    fine: ``config.json`` and ``metadata.json`` must be JSON objects, and ``model.safetensors`` must
    have a readable header whose tensors lie within the file.

    Raises:
        ValueError: not a path, a file rather than a folder, or a damaged export file (naming it).
        FileNotFoundError: no such folder, or it lacks one of ``EXPORT_FILES``.
    """
    check_path(export_dir, "export_dir")
    folder = Path(export_dir).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"export_dir: no folder at {str(folder)!r}; pass the folder export_state_dict wrote")
    if not folder.is_dir():
        raise ValueError(f"export_dir must be a folder, got the file {str(folder)!r}; pass the folder that holds it")
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"export_dir {str(folder)!r} is not an export folder: it lacks {', '.join(missing)}; "
            f"export the model with export_state_dict first (an export folder holds {', '.join(EXPORT_FILES)})"
        )
    for name, problem in (
        ("model.safetensors", _weights_problem(folder / "model.safetensors")),
        ("config.json", _json_problem(folder / "config.json")),
        ("metadata.json", _json_problem(folder / "metadata.json")),
    ):
        if problem is not None:
            raise ValueError(
                f"export_dir {str(folder)!r}: {name} {problem}; it is damaged, so nothing would load it. "
                "Export the model again with export_state_dict"
            )
    return folder


def _json_problem(path: Path) -> str | None:
    """Why ``path`` is not a JSON object, or None."""
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"is not valid JSON ({err})"
    return None if isinstance(data, dict) else f"holds a JSON {type(data).__name__}, not an object"


def _weights_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable safetensors file (its header, read with the standard library), or None.

    The format: a little-endian u64 header length, a JSON header naming each tensor's byte range, the bytes.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        start = file.read(8)
        header_len = struct.unpack("<Q", start)[0] if len(start) == 8 else size
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            return f"is not a safetensors file (its {size} bytes hold no complete header)"
        try:
            header = json.loads(file.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return f"is not a safetensors file (its header is not JSON: {err})"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    data_bytes = size - 8 - header_len
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        fits = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        if name != "__metadata__" and not (fits and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            return f"is truncated or not a safetensors file (tensor {name!r} lies outside its {data_bytes} data bytes)"
    return None


def check_repo_id(repo_id: Any) -> None:
    """A Hub model id, 'owner/name'.

    Raises:
        ValueError: not a string, no owner, or characters the Hub refuses.
    """
    if not isinstance(repo_id, str):
        raise ValueError(f"repo_id must be a string 'owner/name', got {repo_id!r}")
    if "/" not in repo_id:
        raise ValueError(
            f"repo_id must be 'owner/name', got {repo_id!r}: add your user or organization name, e.g. 'me/{repo_id}'"
        )
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(
            f"repo_id must be 'owner/name', got {repo_id!r}: each part is 1-96 letters, digits, '_', '-' or '.', "
            "not starting or ending with '-' or '.', without '--', '..' or a trailing '.git', and exactly one '/'"
        )


def resolve_endpoint(endpoint: str | None) -> str:
    """The Hub URL to use: ``endpoint``, else ``HF_ENDPOINT``, else ``DEFAULT_ENDPOINT``; checked, no trailing '/'.

    Raises:
        ValueError: not an http(s) URL with a host (naming ``endpoint`` or ``HF_ENDPOINT``).
    """
    name, url = ("endpoint", endpoint) if endpoint is not None else ("HF_ENDPOINT", os.environ.get("HF_ENDPOINT"))
    if url is None or (name == "HF_ENDPOINT" and not url.strip()):
        return DEFAULT_ENDPOINT
    check_str(url, name)
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL such as {DEFAULT_ENDPOINT!r}, got {url!r}")
    return url.strip().rstrip("/")


def list_export_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (recursively, sorted) as a '/'-separated relative path, hidden ones left out.

    Hidden files and folders (``.git``, ``.cache``, ``.ipynb_checkpoints`` ...) are a tool's
    bookkeeping, not part of the model, so they are neither listed nor uploaded.
    """
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(relative.as_posix())
    return files


# --------------------------------------------------------------------------- the seam, and the network


def import_huggingface_hub() -> Any:
    """The ``huggingface_hub`` module, or an ImportError that says how to install it.

    Raises:
        ImportError: if huggingface_hub is not installed.
    """
    return import_optional(
        "huggingface_hub", "publishing to the Hub", alternative="or pass dry_run=True to list what would be uploaded"
    )


def unreachable_reason(hub: Any, endpoint: str, timeout_s: float) -> str | None:
    """Why nothing can be sent to ``endpoint`` now (offline mode, or no TCP connection within ``timeout_s``), or None.

    The client alone would not say so in bounded time: its shared HTTP client has no timeout.
    """
    if hub.is_offline_mode():
        return "HF_HUB_OFFLINE is set, so huggingface_hub sends no request; unset it to publish"
    host, port = first_hop(endpoint)
    error = connect_error(host, port, timeout_s)
    if error is None:
        return None
    return f"cannot reach {endpoint} ({host}:{port}): {error}; nothing was uploaded"


def first_hop(endpoint: str) -> tuple[str, int]:
    """The host and port a request to ``endpoint`` connects to first: the endpoint's, or the proxy's."""
    parts = urlsplit(endpoint)
    # The same *_PROXY / NO_PROXY variables the HTTP client honours (it trusts the environment).
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def connect_error(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to ``host:port`` does not open within ``timeout_s``, or None when it does."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except TimeoutError:
            outcome.append(f"no connection within timeout_s={timeout_s:g} s")
        except OSError as err:
            outcome.append(str(err) or type(err).__name__)

    # In a daemon thread because name resolution takes no timeout and can stall on a dead network;
    # a stalled attempt is left behind, and ends with the process at the latest.
    worker = threading.Thread(target=attempt, name="hub-preflight", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return outcome[0] if outcome else f"no connection within timeout_s={timeout_s:g} s (name lookup still running)"


@contextlib.contextmanager
def client_timeout(hub: Any, timeout_s: float) -> Iterator[None]:
    """Give huggingface_hub's shared HTTP client a ``timeout_s`` timeout for the duration, then restore it.

    The client is built with no timeout and HfApi's methods take none, so a server that
    accepts a connection and never answers would hold the call forever. The timeout bounds
    each connect, read and write; it applies to every thread using the client meanwhile.
    """
    session = hub.get_session()
    previous = session.timeout
    session.timeout = timeout_s
    try:
        yield
    finally:
        session.timeout = previous


def _upload(hub: Any, plan: _UploadPlan) -> dict[str, Any]:
    """Create the repo if needed and commit the listed files; a client error becomes a 'failed' result."""
    api = hub.HfApi(endpoint=plan.endpoint, token=plan.token)
    try:
        with client_timeout(hub, plan.timeout_s):
            repo_url = api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
            commit = api.upload_folder(
                folder_path=plan.folder,
                repo_id=plan.repo_id,
                commit_message=plan.commit_message,
                # Exactly the listed files (escaped: a name may hold glob characters), as a dry run shows them.
                allow_patterns=[glob.escape(name) for name in plan.files],
            )
    except Exception as err:
        # The client raises many types for one outcome: HfHubHTTPError (401, 403, 5xx), httpx2 transport
        # errors (timeouts, refused), ValueError (README metadata the Hub rejects), RuntimeError (an LFS
        # upload). Each means the upload did not complete (the repo may exist, empty); the caller gets it as data.
        return {"status": "failed", "reason": describe_client_error(err, plan.timeout_s)}
    return {
        "status": "published",
        "repo_id": plan.repo_id,
        "url": str(repo_url),
        "commit": commit.oid,
        "files": list(plan.files),
    }


def describe_client_error(err: BaseException, timeout_s: float) -> str:
    """The Hub's status and message when it answered, else what went wrong on the way."""
    cause: BaseException | None = err
    while cause is not None:  # an LFS upload wraps the server's answer in a RuntimeError
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if status is not None:
            message = getattr(cause, "server_message", None) or str(cause).splitlines()[0]
            return f"the Hub answered {status}: {message}"
        cause = cause.__cause__
    if "Timeout" in type(err).__name__:  # httpx2's ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout
        return f"no answer within timeout_s={timeout_s:g} s ({type(err).__name__}); raise timeout_s on a slow link"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
