"""The built-in stage kinds, one file each (registered in ../registry.py's BUILTIN)."""
