"""Thin Qt/magicgui docks; the logic they call lives outside this package and is tested without Qt."""
