"""Renders the generated pages: reference.py reads the code, pages.py writes the site."""
