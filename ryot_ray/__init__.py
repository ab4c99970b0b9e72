"""ryot-ray: BitNet b1.58 training, tuning and validation on CPU Ray clusters."""

__version__ = "0.1.0"
