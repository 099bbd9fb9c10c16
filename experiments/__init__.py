"""The experiment harness: runners, statistics and plots of the transplant experiments.

Not part of the installed library; run from the repository root (a development install puts
it on the path). ``common`` holds what every experiment shares (arms, plans, stacking of arms,
progress, command line); ``dqn`` and ``ppo`` run the RL experiments on the learners of
:mod:`flaxsurgery.rl`, ``digits`` the digit-classes classifier, ``transformer`` the growing
decoder; ``results`` computes the statistics and writes ``summary.json`` and ``curves.png``.
"""
