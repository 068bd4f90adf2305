"""The training engine: trials, optimizers, schedules, evaluation, and the engines that run them."""
