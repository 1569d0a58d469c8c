"""The command layer: one module per `franca` sub-command (flags, model from flags, result files).
May import every package of franca; nothing outside franca/cli.py and franca/commands/ imports it."""
