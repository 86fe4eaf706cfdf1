"""Helpers kept at the seed's paths."""
