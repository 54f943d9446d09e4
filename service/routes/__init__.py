"""HTTP routes, one module per concern; each stays thin and calls into service/*."""
