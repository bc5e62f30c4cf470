"""Leaderboard tables from the results store."""
from bench.leaderboard.table import FORMATS, Board, build_board, leaderboard, render

__all__ = ["FORMATS", "Board", "build_board", "leaderboard", "render"]
