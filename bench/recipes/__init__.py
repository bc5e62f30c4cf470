"""Training recipes: the vocabulary a model card's ``recipe:`` block is validated against (the base class,
its params, the registry) and the core recipes (``standard``, ``pgd-at``). Method families register their
own. Running a recipe is ``bench.training``'s job; cards only need this package to check and hash theirs."""
from bench.recipes.base import RECIPES, Attack, Batch, ParamGroup, Recipe, RecipeParams, Schedule, make_recipe

__all__ = ["RECIPES", "Attack", "Batch", "ParamGroup", "Recipe", "RecipeParams", "Schedule", "make_recipe"]
