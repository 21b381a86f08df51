"""Sweeps of pattern-pair -> mode tables (offline by quantization error, online by training)."""
