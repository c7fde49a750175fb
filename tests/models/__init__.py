"""Tests of the model zoo, feature extraction and their CLI (helpers in :mod:`tests.models.model_fixtures`)."""
