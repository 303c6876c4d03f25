"""The ``lamps-agent`` command line."""
