"""Namespaced volumes: the rules, the container spec, where a path lands, and preparing
directories for it."""
