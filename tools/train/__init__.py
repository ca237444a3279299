"""Training your own recogniser: dataset preparation, training, and deployment behind an accuracy gate (#19)."""
