"""Kernel side of the packet path: the rules that queue packets, and the grant sets."""
