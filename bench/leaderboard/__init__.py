"""Leaderboard tables from the results store."""
from bench.leaderboard.table import FORMATS, leaderboard, quality_board, render, render_quality

__all__ = ["FORMATS", "leaderboard", "quality_board", "render", "render_quality"]
