"""Elastic workers (issue 20): how many worker jobs each queue needs (policy.py)."""
