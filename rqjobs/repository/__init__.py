"""The repository engine: check an address, clone it in a hardened git, read its history, analyse and document it."""
