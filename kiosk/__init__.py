"""face-kiosk: face-recognition access control for the edge.

Pipeline stages live in one module each (detect, quality, align, embed, match); ``kiosk.pipeline`` composes them and
``kiosk.context`` is the one place models and the gallery are created.
"""

__version__ = "0.1.0"
