"""The single-machine rig: a whole hot update on one host (``hotupdate demo``), also used by tests.

It stands up what would be separate machines as local processes: a generated version tree,
a real rsync daemon on loopback, real Erlang nodes as game servers, and every component.
"""
