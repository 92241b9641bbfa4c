"""Standardized engine metrics: scrape, rewrite, serve."""
