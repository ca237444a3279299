"""Training your own recogniser: data, backbones, margin heads, the training loop and its validation."""
