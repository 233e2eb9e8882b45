"""What a component needs fetched before training, and fetching it from the Hugging Face Hub into its cache.

A plugin declares what its components need downloaded with a module attribute ``PLUGTRAIN_FETCH``:
``needs(factory, params) -> [HubFiles | LocalFile, ...]`` (``params`` as the spec gives them; ``[]``: nothing).
``plugtrain weights fetch SPEC`` asks it for the spec's backbone and fills the cache (``HF_HOME`` /
``HF_HUB_CACHE``) through ``huggingface_hub``, so that training with ``HF_HUB_OFFLINE=1`` reads it from there. The
built-in timm backbones declare their ``pretrained`` weights this way; a third-party backbone gets the same command
by declaring its own. The download helpers here are also what the timm backbones use when they build.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs


@attrs.frozen
class HubFiles:
    """Files of one hub repository that a component needs: the first of ``files`` that the repository has (e.g.
    ``("model.safetensors", "pytorch_model.bin")``), and each of ``optional`` that it has.

    ``param`` is the spec parameter that asks for them (``"pretrained"``) and ``key`` the prefix of error messages
    (``"backbone.pretrained"``); ``label`` is what the spec wrote (default ``hf-hub:REPO[@REVISION]``), ``why`` a note
    on it (``"the default weights of resnet18"``); ``hint`` ends the message when the repository holds none of
    ``files``; ``check()``, when given, says why files that are there would be refused (None: they fit).
    """

    repo: str
    files: tuple[str, ...] = attrs.field(converter=tuple)
    revision: str | None = None
    optional: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    param: str = "pretrained"
    key: str = ""
    label: str = ""
    why: str = ""
    hint: str = ""
    check: Callable[[], str | None] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def shown(self) -> str:
        """``label``, else ``hf-hub:REPO[@REVISION]``."""
        return self.label or f"hf-hub:{self.repo}" + (f"@{self.revision}" if self.revision else "")

    @property
    def prefix(self) -> str:
        return f"{self.key}: " if self.key else ""


@attrs.frozen
class LocalFile:
    """A local file a component reads (``path``, relative to the working directory): nothing to fetch, reported."""

    path: str
    param: str = "pretrained"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (huggingface_hub then never touches the network)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """The huggingface_hub cache directory (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_file(need: HubFiles) -> str | None:
    """The cached path of the first of ``need.files`` there, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in need.files:
        found = try_to_load_from_cache(need.repo, filename, revision=need.revision)
        if isinstance(found, str):
            return found
    return None


def _miss(need: HubFiles, reason: str) -> str:
    return (f"{need.prefix}{need.shown} is not in the Hugging Face cache ({hub_cache_dir()}) and {reason}. Fill the "
            "cache where there is network with `plugtrain weights fetch SPEC` (the same HF_HOME), then run again")


def download(need: HubFiles) -> str:
    """The local path of the first of ``need.files`` the repository has: from the cache, else downloaded into it
    (``hf_hub_download``; ``HF_HUB_OFFLINE=1`` allows the cache only); ``need.optional`` files come along when the
    repository has them. Raises :class:`PlugtrainError` with one line when the file cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from plugtrain.core.errors import PlugtrainError, first_line

    def get(filename: str) -> str:
        return hf_hub_download(need.repo, filename, revision=need.revision, library_name="plugtrain")

    label = f"{need.prefix}{need.shown}"
    try:
        path = None
        for i, filename in enumerate(need.files):
            try:
                path = get(filename)
                break
            except LocalEntryNotFoundError:
                cached = cached_file(need)  # e.g. offline with only the second kind cached
                if cached is not None:
                    path = cached
                    break
                raise
            except EntryNotFoundError:  # the repository has no such file: try the next kind
                if i == len(need.files) - 1:
                    raise PlugtrainError(f"{label} holds none of {', '.join(need.files)}"
                                         + (f": {need.hint}" if need.hint else "")) from None
        for filename in need.optional:
            try:
                get(filename)
            except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
                pass
    except LocalEntryNotFoundError:
        raise PlugtrainError(_miss(need, "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be "
                                   "reached")) from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise PlugtrainError(f"{label}: {first_line(exc) or type(exc).__name__} "
                             "(a private or gated repository needs `hf auth login` or HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise PlugtrainError(f"{label}: {first_line(exc) or type(exc).__name__}") from None
    except OSError as exc:
        raise PlugtrainError(f"{label}: cannot write the cache ({hub_cache_dir()}): {exc.strerror or exc}") from None
    return str(path)
