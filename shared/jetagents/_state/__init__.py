"""Shared state, by consistency level."""
