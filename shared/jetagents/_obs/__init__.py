"""Observability: metrics, spans, logging, health, the loop watchdog."""
