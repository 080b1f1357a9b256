"""Tilers: one module per op family; each turns a tensor op into a maia.kernel."""
