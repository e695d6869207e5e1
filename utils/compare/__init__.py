"""The comparison's parts: the baseline, the measurements of both models, and the verdict.

``utils.tier3_benchmark_comparison.test_benchmark_comparison`` is the function to call;
these modules are what it is made of (``baseline``, ``measure``, ``verdict``).
"""
