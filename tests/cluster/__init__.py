"""Tests of the container path: the image, docker-compose clusters, failover in containers."""
