"""Device, seeding, distributed and other helpers used by every package.
Imports nothing of franca (the bottom layer)."""
