"""Reading and writing files: the checked image reader, all-or-nothing outputs, write-error advice."""
