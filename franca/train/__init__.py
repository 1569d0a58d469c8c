"""Franca pretraining (`franca pretrain`, `franca highres`): configs, schedules, optimizer, EMA, step, loop.
May import franca.eval, franca.data, franca.models, franca.losses and franca.utils; never rasa, viz or commands."""
