"""The synthetic shapes world and the pretraining of the built-in `tiny-world` base model."""
