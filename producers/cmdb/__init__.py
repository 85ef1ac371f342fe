"""The CMDB: operators start and push hot updates; a process manager drives the rest through events."""
