"""What the adapters of the Triton and vLLM kinds share: the server process they own, and
the life of an adapter process around it."""
