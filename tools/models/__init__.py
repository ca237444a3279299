"""Model tools: build the default models, export, quantise, convert to and from TFLite, the manifest registry."""
