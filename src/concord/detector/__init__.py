"""Failure detectors and membership: a fixed-timeout heartbeat detector, the phi accrual
detector, and SWIM membership with Lifeguard. Pure, deterministic, time passed in as ns."""
