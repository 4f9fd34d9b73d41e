"""Integration tests: real ``concord serve`` processes on 127.0.0.1 (``-m integration``)."""
