"""lbtui: a load balancer and API gateway that lives in your terminal."""

__version__ = "0.1.0"
