"""Clients that knock."""
