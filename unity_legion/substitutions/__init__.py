"""Unity's graph substitutions as data: rules (rule.py), matching (match.py), rewriting
(apply.py), the built-in rule library (library.py), parallelisation rules (parallel.py), the
algebra of parallel-op chains (algebra.py) and the TASO/FlexFlow JSON loader (taso_json.py).
Pure Python: never imports legate."""

from .algebra import CHAIN_RULES, ChainRule, simplify
from .apply import AppliedRule, Rewrite, apply, replay
from .library import builtin_rules, families
from .match import Match, all_matches, find_matches
from .parallel import (ParallelRule, allowed_axes, data_parallel_rules, parallel_rules,
                       rules_of_kinds)
from .rule import (AttrEq, AttrIn, AttrNot, AttrOf, Computed, Copy, In, New, OpPattern,
                   OpTemplate, Out, Pred, Rule, SubstitutionError, WeightFrom)
from .taso_json import LoadResult, TasoFormatError, load_rules
from .weights import WeightSource

__all__ = [
    "AppliedRule", "AttrEq", "AttrIn", "AttrNot", "AttrOf", "CHAIN_RULES", "ChainRule", "Computed",
    "Copy", "In", "LoadResult", "Match", "New", "OpPattern", "OpTemplate", "Out", "ParallelRule",
    "Pred", "Rewrite", "Rule", "SubstitutionError", "TasoFormatError", "WeightFrom",
    "WeightSource", "all_matches", "allowed_axes", "apply", "builtin_rules", "data_parallel_rules", "families",
    "find_matches", "load_rules", "parallel_rules", "replay", "rules_of_kinds", "simplify",
]
