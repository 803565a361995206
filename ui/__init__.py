"""SlimLab's Gradio explorer; ``build_app()`` returns the Blocks, ``launch_kwargs()`` its launch options."""
from .app import build_app, launch_kwargs

__all__ = ["build_app", "launch_kwargs"]
