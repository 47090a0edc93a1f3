"""What kdns knows: the trimmed objects (`model`) and the store that indexes them (`store`).

Sources write here; the DNS resolution reads here. Nothing in this package does I/O.
"""
