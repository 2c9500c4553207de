"""exe-stream: high-throughput video analytics for facial-expression research on film."""

__version__ = "0.1.0"
