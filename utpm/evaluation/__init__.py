"""Evaluation: Prec@K as the paper's Eq. 5, the non-neural yardsticks, and experiments."""
