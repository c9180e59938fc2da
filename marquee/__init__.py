"""Marquee: a Netflix-style personalization system on Ray (shared kernel)."""

__version__ = "0.1.0"
