"""HTTP API and web page for a trained model (`tbclf serve`); see :func:`create_app`."""

from tbclf.serve.app import create_app

__all__ = ["create_app"]
