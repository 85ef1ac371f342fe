"""file_push: on a version receiver, rsync an update's chosen files to the ops managers' rsync modules."""
