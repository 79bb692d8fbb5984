"""Scaling science: ladders of model sizes from one recipe, the laws fitted to their losses, and μP's coordinate check.

The research layer above `train`: it composes ordinary runs and never reaches into the trainer.
"""
