"""What the actions do: the controller (each action bound to its handler), configuration
transactions with their structured outcomes, and prose (their words, which every edge imports).
Written against core.protocols; uses the host adapters, never the transports, the server or the
command line."""
