"""tbclf: tell tuberculosis from healthy lungs on chest X-rays, with PyTorch Lightning."""

__version__ = "0.1.0"
