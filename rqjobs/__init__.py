"""rqjobs: the background jobs of the documentation platform, on RQ."""

__version__ = '0.1.0'
