"""The core: the action table, a request as every transport hands it over, dispatch (auth ->
action -> inputs -> run -> audit), typed errors, settings and the typed seams (protocols) that
the host adapters implement. Imports nothing from the other layers."""
