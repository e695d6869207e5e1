"""Tier 1 and Tier 2: the checks to run on a model before and beside training, one check per module.

Tier 1 (every model should pass these before anyone trains it):
``shapes``, ``gradients``, ``stability``, ``initialization``, ``memory`` and
``speed``. Tier 2 (what the model attends to, which tokens drive it, how
fragile it is): ``attention``, ``attribution`` and ``robustness``. ``tiers``
lists them in run order and ``runner`` runs any of them into one summary.

Each ``test_*`` function takes ``(model, config, ...)``, checks its
arguments before any work starts, and returns a dict with at least:

* ``table``: a pandas DataFrame with the detailed results;
* ``status``: ``'pass'``, ``'warn'`` or ``'fail'``;
* ``summary``: one line with the key figure;
* ``figure``: a matplotlib Figure, where a picture helps.

Nothing here calls ``plt.show()``; figures are built with
``matplotlib.figure.Figure`` so they never pile up in pyplot.

The functions are named ``test_*`` for notebook users, so each one sets
``__test__ = False`` to keep pytest from collecting it.

Example:
    >>> from utils.diagnostics.gradients import test_gradient_flow
    >>> from utils.models import tiny_gpt
    >>> model, config = tiny_gpt(n_layers=2, d_model=32)
    >>> result = test_gradient_flow(model, config)
    >>> result["status"], result["summary"]
    ('pass', '...')
    >>> result["table"].query("status != 'ok'")
"""
