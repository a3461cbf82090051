"""Upload an export folder to the Hugging Face hub, with one-line errors for the usual failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ExportError


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload TransNormerLLM (tnl export)", api: Any = None) -> str:
    """Create `repo_id` (if needed) and upload `folder`; returns the repository URL."""
    import huggingface_hub
    from huggingface_hub import constants

    folder = Path(folder)
    if not folder.is_dir() or not (folder / "config.json").exists():
        raise ExportError(f"{folder} is not an export folder (no config.json); export first, then push")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"push_to_hub needs a repository id 'user_or_org/name', got {repo_id!r}")
    if constants.HF_HUB_OFFLINE:
        raise ExportError("HF_HUB_OFFLINE is set; unset it (and check the network) to push to the hub")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ExportError("not logged in to the Hugging Face hub; run `hf auth login` or set HF_TOKEN")
    api = api or huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message)
    except ExportError:
        raise
    except Exception as err:  # connection errors, 401/403, rate limits: say which, without a traceback
        name = type(err).__name__
        text = str(err).splitlines()[0][:200] if str(err) else ""
        hint = "check the network" if "connect" in (name + text).lower() or "timeout" in (name + text).lower() \
            else "check the token's write access and the repository name"
        raise ExportError(f"push to {repo_id} failed ({name}: {text}); {hint}") from None
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo_id}")
