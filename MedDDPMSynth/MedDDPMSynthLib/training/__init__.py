"""Training a model and evaluating generated images."""
