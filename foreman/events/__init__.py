"""The event log and everything derived from it."""
