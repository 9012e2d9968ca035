"""Evaluation: metrics, statistics, the eval stage with its pinned protocol, and reports."""
