"""The JAX backend's parts: `jax.grad` over Keras's stateless calls."""
