"""Engines that run the data pipeline's stages beyond the one-machine pool (`data.engine`); each is an extra."""
