"""Parts shared by the backends (with the same module names as theirs)."""
