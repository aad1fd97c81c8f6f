"""concurrency-injector: set WEB_CONCURRENCY for Python web servers from their CPU limit."""

__version__ = "0.1.0"
