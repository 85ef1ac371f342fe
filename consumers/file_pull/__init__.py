"""file_pull: on a version receiver, copy a version's ``reloadfiles`` to the update's backup and list it."""
