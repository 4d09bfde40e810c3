"""Rewrite the URLs of local results when a result server's address or port changes (`prefect-bacalhau
readdress`): the files stay where they are, only the published specs that point at them change."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from .specs import PublishedResult

__all__ = ["readdress"]

_T = TypeVar("_T", PublishedResult, str)


def _rebase(url: str, old: str, new: str) -> str:
    if url == old or url.startswith(old + "/"):
        return new + url[len(old) :]
    return url


def _rewrite(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {
            k: _rebase(v, old, new)
            if str(k).lower() == "url" and isinstance(v, str)
            else _rewrite(v, old, new)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, old, new) for v in node]
    return node


def readdress(spec_or_text: _T, old_base: str, new_base: str) -> _T:
    """Rewrite result URLs under `old_base` (e.g. `http://10.0.0.5:6001`) to `new_base`.

    Takes a PublishedResult (returns a new one) or JSON text (every `URL` value in it, at any depth, is
    rewritten; returns JSON text). URLs under other bases are left alone.
    """
    old, new = old_base.rstrip("/"), new_base.rstrip("/")
    if isinstance(spec_or_text, PublishedResult):
        data = _rewrite(spec_or_text.to_bacalhau(), old, new)
        return PublishedResult.model_validate(data)
    return json.dumps(_rewrite(json.loads(spec_or_text), old, new))
