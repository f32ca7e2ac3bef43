"""The training engine's parts: the state a run changes (state.py), everything built before the first
step (setup.py), and one epoch of steps plus its validation (epoch.py). ``alexnet.commands.train`` composes them."""
