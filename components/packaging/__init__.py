"""Component delivery: the champion (and generator) into the BentoML model store, then a Bento."""
