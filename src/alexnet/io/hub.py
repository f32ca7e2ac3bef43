"""Weights from the Hugging Face Hub: ``hf-hub:ORG/NAME`` (or ``hf-hub:ORG/NAME@REVISION``, a branch, tag or
commit) names a repository holding this package's ``model.safetensors``, what ``alexnet export RUN --format hub``
writes. It is read through huggingface_hub's cache (``HF_HUB_CACHE``, default ~/.cache/huggingface/hub), as
timm's ``hf-hub:`` names are: after one download, ``HF_HUB_OFFLINE=1`` reads it from the cache with no network.
huggingface_hub is the optional extra ``hub``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import ModuleType

from ..errors import UserError, missing_extra

PREFIX = "hf-hub:"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")  # the Hub's ORG/NAME


def is_hub(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def split(spec: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME@REV`` -> ("ORG/NAME", "REV"); the revision is None when not given (the main branch)."""
    repo, _, revision = spec[len(PREFIX) :].partition("@")
    if not _REPO_ID.match(repo) or ".." in repo or (revision == "" and "@" in spec):
        raise UserError(f"{spec}: a Hub weights name is hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo, revision or None


def _huggingface_hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise missing_extra("hf-hub: weights", "hub") from None
    return huggingface_hub


def download(spec: str, filename: str = WEIGHTS_FILE) -> Path:
    """The cached copy of ``filename`` of the repository ``spec`` names, downloaded first when it is not cached
    (and downloads are allowed); one ``UserError`` for every way that fails."""
    repo, revision = split(spec)
    hf = _huggingface_hub()
    from huggingface_hub import constants, errors

    # its retries each log two warnings ("... thrown while requesting HEAD ...", "Retrying in 1s [Retry 1/5]"):
    # the UserError below says the one thing they add up to
    quiet, level = logging.getLogger("huggingface_hub"), logging.getLogger("huggingface_hub").level
    quiet.setLevel(logging.ERROR)
    try:
        return Path(hf.hf_hub_download(repo, filename, revision=revision, library_name="alexnet"))
    except errors.LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE=1 allows no download" if constants.HF_HUB_OFFLINE
               else "the Hub could not be reached")  # fmt: skip
        raise UserError(f"{spec}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                        f"{why}") from None  # fmt: skip
    except errors.RevisionNotFoundError:
        raise UserError(f"{spec}: the repository has no revision {revision!r}") from None
    except errors.RepositoryNotFoundError:  # gated and private ones too, without a login
        raise UserError(f"{spec}: no such model repository on the Hub (a private or gated one needs "
                        "`hf auth login`)") from None  # fmt: skip
    except errors.EntryNotFoundError:
        raise UserError(f"{spec}: the repository has no {filename}; `alexnet export RUN --format hub` writes what "
                        "a repository of this package's weights holds") from None  # fmt: skip
    except (errors.HFValidationError, errors.HfHubHTTPError, OSError) as e:
        raise UserError(f"{spec}: could not download {filename} ({str(e).splitlines()[0][:200]})") from None
    finally:
        quiet.setLevel(level)
