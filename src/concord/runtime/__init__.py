"""The node at run time: the asyncio driver that runs the Raft core for real."""
