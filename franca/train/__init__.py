"""Franca pretraining: typed configs and presets, schedules, optimizer groups, EMA teacher, the step,
the loop with exact resume, data plumbing and distributed wrappers (`franca pretrain`, `franca highres`)."""
