"""sbi_kit: sampling and simulation-based inference in JAX."""
