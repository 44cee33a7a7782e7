"""Worlds the demo plays in: each a recipe, built locally and cached by the recipe's hash."""
