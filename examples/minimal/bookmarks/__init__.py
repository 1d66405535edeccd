"""A small bookmarks service."""
