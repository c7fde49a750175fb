"""Analyses of stored artefacts that are not runs: the embedding-bias analysis of a frozen encoder's
features."""

from fairfm.analysis.embeddings import (
    ANALYSIS_VERSION,
    EmbeddingAnalysis,
    analyze_embeddings,
    features_embeddings,
    run_embeddings,
    stored_embedding_analyses,
)

__all__ = [
    "ANALYSIS_VERSION",
    "EmbeddingAnalysis",
    "analyze_embeddings",
    "features_embeddings",
    "run_embeddings",
    "stored_embedding_analyses",
]
