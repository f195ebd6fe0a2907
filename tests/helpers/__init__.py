"""Shared helpers for the end-to-end tests: paths, processes, clients and logs."""
