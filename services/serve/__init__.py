"""Grounding inference on Ray Serve: image + phrase -> box in original-image pixels.

config.py (args and live settings), validate.py (upload checks), adapters.py (which adapter to serve),
core.py (the plain service class), http.py (request reading), app.py (the Ray Serve deployment; imports
Ray, so it is not re-exported here), static/ (the page at `/`).
"""

from services.serve.config import Limits, ServeArgs, ServeUserConfig
from services.serve.validate import BadInput, DecodedImage, check_phrase, decode_image

__all__ = ["BadInput", "DecodedImage", "Limits", "ServeArgs", "ServeUserConfig",
           "check_phrase", "decode_image"]
