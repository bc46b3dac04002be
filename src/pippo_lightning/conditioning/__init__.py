"""The conditions a Pippo model reads, and classifier-free guidance over them, in one place.

See :mod:`.dropout` (which condition drops with which, the dropout masks of training and
guidance) and :mod:`.latents` (the conditions of one batch in latent space).
"""
