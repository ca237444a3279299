"""The model tools and measuring tools (``python -m tools``); the kiosk never imports this package."""

from pathlib import Path

# The checkout: models/, docs/results/, pyproject.toml; ../shared beside it holds the test data.
ROOT = Path(__file__).resolve().parents[1]
