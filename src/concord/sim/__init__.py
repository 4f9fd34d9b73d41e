"""Deterministic simulation of whole clusters, client histories and their checkers."""
