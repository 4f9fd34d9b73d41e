"""Shared protocol building blocks: quorum maths, trace events. Standard library only."""
