"""Adaptation of foundation models: cached feature extraction (more adaptation methods live beside it)."""

from fairfm.adapt.features import FeatureSet, extract_features, feature_cache_key

__all__ = ["FeatureSet", "extract_features", "feature_cache_key"]
