"""Framework adapters: bridges from agent frameworks and serving engines to the lamps-agent core."""
