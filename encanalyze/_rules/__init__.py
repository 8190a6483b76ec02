"""Encoding rules, one module per method: the pure rule and the public analyzer class.

A rule is ``rule(xp, state, num_steps, is_symmetric, **params) -> (min, max)``: it reads an
observer's state of ``E`` encoding elements and returns ``(E,)`` encodings, all elements at once.
"""
