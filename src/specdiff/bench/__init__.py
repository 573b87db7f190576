"""Benchmarks: many prompts x methods x budgets x temperatures in one run, AR as the baseline."""
