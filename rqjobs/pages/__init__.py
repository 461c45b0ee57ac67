"""Pages written by a language model: one job per page on queue `pages`, a finishing job per warehouse.

Off unless `LLM_BASE_URL` is set; the deterministic pages of `rqjobs.repository.documentation` stay the default.
"""
