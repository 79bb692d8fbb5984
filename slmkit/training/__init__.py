"""Training with Lightning: the objective, the data module, the trainer builder and the run that ties them together."""
