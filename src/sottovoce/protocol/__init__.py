"""KSMP v3 delivery contract (DESIGN §6): the wire events, sans-IO, shared by server and client."""
