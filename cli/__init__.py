"""The ``hotupdate`` command: one subcommand module per area, registered in main.py."""
