"""Models: the manifest (files, hashes, preprocessing, thresholds) and the runtime backends that load them."""
