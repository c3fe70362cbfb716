"""NFQUEUE side of the packet path: read a queued packet, decode it, verdict it."""
