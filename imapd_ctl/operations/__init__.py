"""What the actions do: the controller (each action bound to its handler) and configuration
transactions with their structured outcomes. Written against core.protocols; uses the host
adapters, never the transports or entry points."""
