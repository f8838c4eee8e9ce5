"""Compiled helpers of the media plane (C sources here, built by ``python -m
trackyard.sfu.native.build`` at install; the pure-Python reference paths live beside their
users)."""
