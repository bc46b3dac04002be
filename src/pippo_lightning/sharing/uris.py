"""``hf://owner/name[@revision]`` URIs, the Hub's endpoint and cache, and its errors as one line.

Errors of the Hub (offline mode, a rejected token, no network) become one :class:`HubError` line
that says what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require
from pippo_lightning.progress import hub_progress

HF_SCHEME = "hf://"


class HubError(PippoError):
    """The Hub could not be reached, refused us, or holds something we cannot use."""


# ---------------------------------------------------------------------------- hf:// URIs
def is_hf_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """``hf://owner/name[@revision]`` → (repo id, revision or None)."""
    body = uri[len(HF_SCHEME) :] if uri.startswith(HF_SCHEME) else uri
    body, _, revision = body.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", body):
        raise HubError(f"{uri!r} is not a Hub model: expected hf://owner/name[@revision]")
    return body, revision or None


# ----------------------------------------------------------------------------- Hub errors
def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _is_connection_error(error: BaseException | None) -> bool:
    # huggingface_hub wraps httpx; match by name so a renamed transport module cannot break us.
    while error is not None:
        if any(
            name in type(error).__name__
            for name in ("ConnectError", "Timeout", "ConnectionError", "NetworkError")
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def explain_hub_error(error: BaseException, action: str, repo_id: str) -> str:
    """One line for a huggingface_hub error: what went wrong and what to do about it."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause = error.__cause__
    if isinstance(error, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled):
        return (
            f"cannot {action} {repo_id}: HF_HUB_OFFLINE=1 and it is not in the Hugging Face cache "
            f"({_cache_hint()}); unset HF_HUB_OFFLINE on a machine with network access"
        )
    if _status(error) == 401 or _status(cause) == 401:
        return (
            f"cannot {action} {repo_id}: the Hub at {hub_endpoint()} rejected the token (401); "
            "set HF_TOKEN to a valid token (https://huggingface.co/settings/tokens) or run "
            "`hf auth login` (for a public repo, unset HF_TOKEN instead)"
        )
    if isinstance(error, RevisionNotFoundError):
        return f"cannot {action} {repo_id}: no such revision on the Hub"
    if isinstance(error, RepositoryNotFoundError) or _status(error) == 404:
        return (
            f"cannot {action} {repo_id}: no such repository on the Hub at {hub_endpoint()} "
            "(a private one needs HF_TOKEN with read access)"
        )
    if _is_connection_error(error) or isinstance(error, LocalEntryNotFoundError):
        return (
            f"cannot {action} {repo_id}: the Hub at {hub_endpoint()} is unreachable and the "
            f"files are not in the Hugging Face cache ({_cache_hint()}); check the network or "
            "proxy, or set HF_ENDPOINT to a reachable mirror"
        )
    if isinstance(error, HfHubHTTPError):
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"cannot {action} {repo_id}: the Hub answered {_status(error)}: {first}"
    return f"cannot {action} {repo_id}: {type(error).__name__}: {error}"


def _cache_hint() -> str:
    from huggingface_hub import constants

    return f"HF_HOME={constants.HF_HOME}"


@contextmanager
def hub_errors(action: str, repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub / transport exceptions raised in the block into one HubError."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as error:
        hub_error = isinstance(
            error, HfHubHTTPError | LocalEntryNotFoundError | OfflineModeIsEnabled
        )
        if not hub_error and not _is_connection_error(error):
            raise  # a local file problem (huggingface_hub's errors are OSErrors too): as is
        raise HubError(explain_hub_error(error, action, repo_id)) from error
    except Exception as error:
        if _is_connection_error(error):  # httpx errors are not OSErrors
            raise HubError(explain_hub_error(error, action, repo_id)) from error
        raise


def hub_cache_root() -> Path:
    """Where pulled checkpoints are rebuilt (one folder per repo and commit)."""
    base = os.environ.get("PIPPO_HUB_CACHE")
    if base:
        return Path(base)
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return xdg / "pippo_lightning" / "hub"


def hub_snapshot(
    repo_id: str,
    repo_type: str,
    revision: str | None,
    allow_patterns: str | list[str],
    action: str,
    purpose: str,
) -> Path:
    """``snapshot_download`` of the allowed files into the Hugging Face cache (HF_HOME; works
    offline once cached), with one clear error naming ``action`` and ``repo_id`` on failure and
    the `hub` extra named when huggingface_hub is missing (``purpose``: what needed it).
    Progress (files, bytes, ETA) shows in our rich display where bars are on."""
    require("huggingface_hub", purpose)
    from huggingface_hub import snapshot_download

    with hub_errors(action, repo_id), hub_progress(f"download {repo_id}") as tqdm_class:
        return Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                tqdm_class=tqdm_class,
            )
        )
