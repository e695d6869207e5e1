"""The hyperparameter search's parts: the search space, the optuna study, the trials and the figure.

``utils.tier3_hyperparameter_search.test_hyperparameter_search`` is the function to call;
these modules are what it is made of (``space``, ``study``, ``trials``, ``figure``).
"""
