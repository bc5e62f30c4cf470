"""Numerical building blocks shared by threat families and recipes: norms and projections, attack
losses, and projected gradient descent."""
