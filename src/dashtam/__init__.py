"""Dashtam: connects a user's accounts at financial providers through OAuth and keeps the tokens."""

__version__ = "0.1.0"
