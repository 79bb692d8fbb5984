"""Research experiments above `train`: studies (a recipe x factors x seeds, run and resumed as ordinary runs), their
statistics, one HTML comparison page, and hyperparameter search. Nothing here reaches into the trainer: a run is a
recipe plus overrides in, a run folder out.
"""
