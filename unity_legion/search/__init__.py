"""Unity's search: the machine-mapping DP (this package's other parts come later). Pure Python."""

from unity_legion.search.brute_force import brute_force_mapping
from unity_legion.search.cache import CacheStats, MappingCache
from unity_legion.search.candidates import Resource, candidate_configs, place
from unity_legion.search.decompose import GraphIndex, Parallel, Series, describe
from unity_legion.search.dp import MappingResult, best_mapping, plan_cost
from unity_legion.search.mapping_cost import MappingCost

__all__ = ["best_mapping", "brute_force_mapping", "MappingResult", "plan_cost", "MappingCost",
           "candidate_configs", "Resource", "place", "GraphIndex", "Parallel", "Series",
           "describe", "MappingCache", "CacheStats"]
