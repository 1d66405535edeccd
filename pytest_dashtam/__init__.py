"""pytest-dashtam: owns the PostgreSQL + Redis test environment of a FastAPI application."""

__version__ = "0.1.0"
