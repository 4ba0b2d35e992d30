"""The values a rule computes from a match (`rule` builds replacements from them, `exprs`
evaluates them) and the rules' error: below both modules, so that exprs does not import rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SubstitutionError(ValueError):
    """A rule is malformed, does not apply to a match, or its rewrite is not a valid graph."""


@dataclass(frozen=True)
class AttrOf:
    """The attribute `attr` of the matched op labelled `op`."""

    op: str
    attr: str


@dataclass(frozen=True)
class Computed:
    """A value computed by the function `fn` of `exprs.FUNCTIONS` from the match and `args`."""

    fn: str
    args: tuple[Any, ...] = ()
