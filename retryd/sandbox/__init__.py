"""The sandbox's demo world and embedded moto server (the command is commands/sandbox.py)."""
