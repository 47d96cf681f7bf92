"""Building blocks of the one training loop (synthbrain.train is the public facade)."""
