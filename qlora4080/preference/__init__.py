"""Preference tuning after SFT: pairs of answers to one prompt, the preferred one and the other."""
