"""What both tabs of the demo share: how a handler reports a user mistake."""

from __future__ import annotations

import warnings


def warn(message: str) -> None:
    """A toast on the page when gradio runs the handler; a Python warning otherwise."""
    try:
        import gradio as gr
    except ImportError:
        warnings.warn(message, stacklevel=3)
        return
    gr.Warning(message)
