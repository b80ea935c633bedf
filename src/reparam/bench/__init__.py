"""Measurement helpers: latency side by side, training cost, params and FLOPs."""
