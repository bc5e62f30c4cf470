"""Leaderboard tables from the results store."""
from bench.leaderboard.table import FORMATS, leaderboard, render

__all__ = ["FORMATS", "leaderboard", "render"]
