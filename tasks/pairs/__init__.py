"""Preference pairs: respond -> critique -> improve -> evaluate -> pair rules (the constitution loop)."""
