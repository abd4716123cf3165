"""The weight-sharing supernet: one DIME-FM training for every student of a ViT space."""
