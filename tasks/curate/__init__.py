"""Curate: token limits, quality filters, dedup without leakage, stable splits."""
