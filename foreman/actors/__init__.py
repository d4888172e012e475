"""Actors: Trio tasks that talk to each other only over memory channels."""
