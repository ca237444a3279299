"""face-kiosk: face-recognition access control for the edge.

Pipeline stages live in one module each (detect, quality, align, embed, match); ``kiosk.recognition.pipeline``
composes them and ``kiosk.context`` is the one place models and the gallery are created.
"""

from pathlib import Path

__version__ = "0.1.0"

# The source checkout this package runs from (an editable install): its models/ is the default models folder.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
