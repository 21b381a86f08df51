"""adahop: MXFP4 pretraining with AdaHOP on torchtitan."""

__version__ = "0.1.0"
