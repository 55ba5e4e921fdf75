"""Strict fakes for things that cannot run on the CI machines (a GPU and its driver)."""
