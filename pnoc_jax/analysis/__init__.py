"""The class analysis of a finished run or comparison (method.md §15)."""
